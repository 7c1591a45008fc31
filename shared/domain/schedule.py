"""Quartz cron schedules in a time zone: validation and next fire times (pure).

Databricks job schedules are Quartz cron expressions (`quartz_cron_expression`) evaluated in a
Java time zone (`timezone_id`). `croniter` does the parsing and the iteration; this module only
translates Quartz's dialect to croniter's and handles time zones:

- The expression is matched against the wall clock of the time zone (naive local times, so
  croniter never sees a UTC offset; its own tz-aware iteration misbehaves around DST).
- A wall time that does not exist (spring forward) fires at the same instant Java's lenient
  calendar gives: the wall time read with the offset before the change (02:30 in a 02:00->03:00
  gap fires at 03:30). A schedule whose hour field is `*` fires every wall time after the jump
  as usual and skips the missing ones, so it neither doubles nor stalls.
- A wall time that occurs twice (fall back) fires once, at its first occurrence, unless the
  hour field is `*`: then a frequent schedule keeps firing through the repeated hour too.
- After downtime, a schedule that missed any number of fire times fires once (`catch_up`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError

from shared.errors import InvalidParameterValue

# Quartz: seconds minutes hours day-of-month month day-of-week [year].
FIELD_NAMES = ("seconds", "minutes", "hours", "day-of-month", "month", "day-of-week", "year")
_FIELD_MAX = (59, 59, 23, 31, 12, 7, 2099)
_DOW_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_WILDCARD_HOURS = frozenset({"*", "*/1", "0/1", "0-23", "0-23/1"})
_GMT_OFFSET = re.compile(r"^(?:GMT|UTC)([+-])(\d{1,2})(?::?(\d{2}))?$")
# How far a search for the next fire time may walk (a schedule that fires every second walks
# at most an hour of repeated wall times).
_MAX_STEPS = 10_000


@dataclass(frozen=True, slots=True)
class Schedule:
    """A validated schedule: the croniter expression (seconds first) and the time zone."""

    quartz: str
    timezone_id: str
    expr: str
    tz: tzinfo
    # The hour field matches every hour: DST changes never stall or double such a schedule.
    wildcard_hour: bool


def _bad(expr: str, why: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"Invalid Quartz cron expression '{expr}': {why}")


def parse_timezone(timezone_id: str) -> tzinfo:
    """A Java time zone id as a tzinfo: IANA names (`Europe/Berlin`), `UTC`, `GMT`, and fixed
    offsets (`GMT+02:00`, `UTC-5`)."""
    if not isinstance(timezone_id, str) or not timezone_id.strip():
        raise InvalidParameterValue("Missing required field: schedule.timezone_id")
    tz_id = timezone_id.strip()
    if tz_id in ("UTC", "GMT", "Z", "Etc/UTC", "Etc/GMT"):
        return UTC
    m = _GMT_OFFSET.match(tz_id)
    if m:
        hours, minutes = int(m.group(2)), int(m.group(3) or 0)
        if hours > 18 or minutes > 59:
            raise InvalidParameterValue(f"Invalid timezone_id '{timezone_id}'")
        delta = timedelta(hours=hours, minutes=minutes)
        return timezone(-delta if m.group(1) == "-" else delta, tz_id)
    try:
        return ZoneInfo(tz_id)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidParameterValue(
            f"Invalid timezone_id '{timezone_id}': not a known time zone "
            "(use an IANA name such as 'Europe/Berlin', or 'UTC')."
        ) from None


def _dow_number(token: str, expr: str) -> int:
    """A Quartz day-of-week (1-7 = SUN-SAT, or a name) as croniter's 0-6 = SUN-SAT."""
    if token in _DOW_NAMES:
        return _DOW_NAMES.index(token)
    if not token.isdigit() or not 1 <= int(token) <= 7:
        raise _bad(expr, f"day-of-week value '{token}' is not 1-7 (SUN-SAT) or SUN..SAT")
    return int(token) - 1


def _dow_item(item: str, expr: str) -> str:
    """One comma-separated day-of-week item, Quartz -> croniter."""
    if item == "*" or item.startswith("*/"):
        return item
    if item == "L":  # "last day of the week" = Saturday
        return "6"
    if "#" in item:  # 6#3 = the third Friday
        day, nth = item.split("#", 1)
        if not nth.isdigit() or not 1 <= int(nth) <= 5:
            raise _bad(expr, f"'#{nth}' must be 1-5 (the nth weekday of the month)")
        return f"{_dow_number(day, expr)}#{nth}"
    if item.endswith("L"):  # 6L = the last Friday
        return f"L{_dow_number(item[:-1], expr)}"
    base, slash, step = item.partition("/")
    if slash and not step.isdigit():
        raise _bad(expr, f"step '/{step}' must be a number")
    if "-" in base:
        lo, hi = base.split("-", 1)
        out = f"{_dow_number(lo, expr)}-{_dow_number(hi, expr)}"
    else:
        out = str(_dow_number(base, expr))
        if slash:  # Quartz "2/2" starts at MON and steps to the end of the week
            out += "-6"
    return out + (f"/{step}" if slash else "")


def _start_step(value: str, field: int) -> str:
    """Quartz "a/b" (from a, every b) is croniter's "a-max/b"."""

    def one(item: str) -> str:
        base, slash, step = item.partition("/")
        if slash and base.isdigit():
            return f"{base}-{_FIELD_MAX[field]}/{step}"
        return item

    return ",".join(one(i) for i in value.split(","))


def to_croniter(quartz: str) -> tuple[str, bool]:
    """Translate a Quartz expression to croniter's syntax (seconds first, as croniter's
    `second_at_beginning`). Returns (expression, hour field is a wildcard).

    Quartz differs from croniter in four ways, handled here: seconds come first and a year may
    follow (croniter takes both with `second_at_beginning`); `?` ("no value") in day-of-month or
    day-of-week means `*`; day-of-week numbers are 1-7 = SUN-SAT (croniter 0-6), with `nL` for
    the last weekday n of the month (croniter `Ln`); "a/b" starts at a (croniter needs "a-max/b").
    """
    if not isinstance(quartz, str) or not quartz.strip():
        raise InvalidParameterValue("Missing required field: schedule.quartz_cron_expression")
    fields = quartz.upper().split()
    if len(fields) not in (6, 7):
        raise _bad(
            quartz,
            f"expected 6 or 7 fields (seconds minutes hours day-of-month month day-of-week "
            f"[year]), got {len(fields)}",
        )
    dom, dow = fields[3], fields[5]
    if dom not in ("?", "*") and dow not in ("?", "*"):
        raise _bad(quartz, "one of day-of-month and day-of-week must be '?'")
    if dom == "?" and dow == "?":
        raise _bad(quartz, "day-of-month and day-of-week cannot both be '?'")
    if dom == "LW" or dom.startswith("L-"):
        raise _bad(quartz, f"day-of-month '{dom}' is not supported")
    out = [_start_step(v, i) for i, v in enumerate(fields)]
    out[3] = "*" if dom == "?" else out[3]
    out[5] = "*" if dow == "?" else ",".join(_dow_item(i, quartz) for i in dow.split(","))
    if len(fields) == 7 and fields[6] not in ("*", "?"):
        out[6] = _start_step(fields[6], 6)
    elif len(fields) == 7:
        out[6] = "*"
    expr = " ".join(out)
    try:
        croniter(expr, datetime(2000, 1, 1), second_at_beginning=True)
    except CroniterError as e:
        raise _bad(quartz, str(e)) from None
    return expr, fields[2] in _WILDCARD_HOURS


@lru_cache(maxsize=1024)
def compile_schedule(quartz_cron_expression: str, timezone_id: str) -> Schedule:
    """Validate a schedule; raises INVALID_PARAMETER_VALUE with what is wrong."""
    expr, wildcard_hour = to_croniter(quartz_cron_expression)
    tz = parse_timezone(timezone_id)
    return Schedule(quartz_cron_expression, timezone_id, expr, tz, wildcard_hour)


def validate(quartz_cron_expression: str, timezone_id: str, *, now_ms: int) -> Schedule:
    """compile_schedule, and the schedule must fire at least once more."""
    s = compile_schedule(quartz_cron_expression, timezone_id)
    if next_fire(s, now_ms) is None:
        raise _bad(quartz_cron_expression, "it never fires again")
    return s


# ---------------------------------------------------------------------------------------------
# Fire times.


def _ms(d: datetime) -> int:
    return int(d.timestamp() * 1000)


def _wall(ms: int, tz: tzinfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(tz).replace(tzinfo=None)


def _instants(s: Schedule, wall: datetime) -> list[int]:
    """The instants (epoch ms) at which the matching wall time `wall` fires."""
    first = _ms(wall.replace(tzinfo=s.tz, fold=0))
    second = _ms(wall.replace(tzinfo=s.tz, fold=1))
    if first == second:
        return [first]
    if _wall(first, s.tz) != wall:
        # A gap (spring forward): fold=0 reads the wall time with the offset before the change.
        return [] if s.wildcard_hour else [first]
    # A repeated wall time (fall back): fold=0 is the first occurrence.
    return [first, second] if s.wildcard_hour else [first]


def _offset(ms: int, tz: tzinfo) -> timedelta:
    off = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(tz).utcoffset()
    return off or timedelta(0)


def _first_after(
    s: Schedule, start_wall: datetime, after_ms: int, *, stop_wall: datetime | None
) -> int | None:
    """The earliest fire instant > after_ms among wall times after start_wall (up to
    stop_wall, if given)."""
    it = croniter(s.expr, start_wall, second_at_beginning=True)
    for _ in range(_MAX_STEPS):
        try:
            wall = it.get_next(datetime)
        except CroniterBadDateError:
            return None
        if stop_wall is not None and wall >= stop_wall:
            return None
        later = [i for i in _instants(s, wall) if i > after_ms]
        if later:
            return min(later)
    return None


def next_fire(s: Schedule, after_ms: int) -> int | None:
    """The first fire time strictly after `after_ms` (epoch ms), or None if there is none."""
    # croniter yields wall times strictly after `start`; instants are filtered by after_ms.
    start = _wall(after_ms, s.tz).replace(microsecond=0)
    best = _first_after(s, start, after_ms, stop_wall=None)
    if best is None or not s.wildcard_hour:
        return best
    # A fall back between now and `best` repeats wall times that lie before `start`: their
    # second occurrences come before `best`.
    before, after = _offset(after_ms, s.tz), _offset(best, s.tz)
    if after >= before:
        return best
    lo, hi = after_ms, best  # the change: the first instant with the later offset
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(mid, s.tz) == after:
            hi = mid
        else:
            lo = mid
    repeat_start = _wall(hi, s.tz)
    repeat_end = repeat_start + (before - after)
    earlier = _first_after(s, repeat_start - timedelta(seconds=1), after_ms, stop_wall=repeat_end)
    return min(best, earlier) if earlier is not None else best


def fire_times(s: Schedule, after_ms: int, count: int) -> list[int]:
    """The next `count` fire times after `after_ms`."""
    out: list[int] = []
    t = after_ms
    for _ in range(count):
        nxt = next_fire(s, t)
        if nxt is None:
            break
        out.append(nxt)
        t = nxt
    return out


def catch_up(s: Schedule, next_fire_ms: int | None, now_ms: int) -> tuple[int | None, int | None]:
    """The schedule rule after any pause in evaluation: (fire, next).

    `fire` is the due fire time to run once now (None if nothing is due); `next` is the next
    fire time strictly after now. However many fire times were missed while the control plane
    was down, they produce one run, not one run each.
    """
    if next_fire_ms is None or next_fire_ms > now_ms:
        return None, next_fire_ms
    return next_fire_ms, next_fire(s, now_ms)
