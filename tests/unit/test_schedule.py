"""Quartz cron schedules in time zones (pure): translation, validation, fire times across DST
changes, and the one-run-after-downtime rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from shared.domain import schedule as sch
from shared.errors import InvalidParameterValue

BERLIN = "Europe/Berlin"


def ms(*args: int, tz: str = "UTC") -> int:
    return int(datetime(*args, tzinfo=ZoneInfo(tz)).timestamp() * 1000)  # type: ignore[misc]


def utc(t: int) -> str:
    return datetime.fromtimestamp(t / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def local(t: int, tz: str) -> str:
    return datetime.fromtimestamp(t / 1000, tz=ZoneInfo(tz)).strftime("%m-%d %H:%M%z")


def fires(quartz: str, tz: str, after: int, n: int) -> list[int]:
    return sch.fire_times(sch.compile_schedule(quartz, tz), after, n)


@pytest.mark.parametrize(
    ("quartz", "expr"),
    [
        ("0 0 2 * * ?", "0 0 2 * * *"),
        ("*/5 * * * * ?", "*/5 * * * * *"),
        ("0 0/15 * * * ?", "0 0-59/15 * * * *"),
        ("0 0 12 ? * 2", "0 0 12 * * 1"),  # Quartz 2 = MON = croniter 1
        ("0 0 12 ? * 1,7", "0 0 12 * * 0,6"),  # SUN and SAT
        ("0 0 12 ? * 2-6", "0 0 12 * * 1-5"),
        ("0 0 12 ? * MON-FRI", "0 0 12 * * 1-5"),
        ("0 0 12 ? * 6L", "0 0 12 * * L5"),  # the last Friday
        ("0 0 12 ? * FRIL", "0 0 12 * * L5"),
        ("0 0 12 ? * 6#3", "0 0 12 * * 5#3"),  # the third Friday
        ("0 0 12 ? * L", "0 0 12 * * 6"),
        ("0 0 12 L * ?", "0 0 12 L * *"),
        ("0 0 12 15W * ?", "0 0 12 15W * *"),
        ("0 0 12 1 JAN ? 2030", "0 0 12 1 JAN * 2030"),
        ("0 0 12 1 1 ? *", "0 0 12 1 1 * *"),
        ("0 0 12 * * *", "0 0 12 * * *"),  # a lenient '*' where Quartz wants '?'
    ],
)
def test_quartz_is_translated_to_croniter(quartz: str, expr: str) -> None:
    assert sch.to_croniter(quartz)[0] == expr


def test_wildcard_hour_detection() -> None:
    assert sch.to_croniter("*/5 * * * * ?")[1] is True
    assert sch.to_croniter("0 */15 0-23 * * ?")[1] is True
    assert sch.to_croniter("0 0 */2 * * ?")[1] is False
    assert sch.to_croniter("0 30 2 * * ?")[1] is False


@pytest.mark.parametrize(
    ("quartz", "message"),
    [
        ("0 0 12 * *", "expected 6 or 7 fields"),
        ("0 0 12 * * ? 2030 x", "expected 6 or 7 fields"),
        ("0 0 12 1 * MON", "one of day-of-month and day-of-week must be '?'"),
        ("0 0 12 ? * ?", "cannot both be '?'"),
        ("60 0 12 * * ?", "Invalid Quartz cron expression"),
        ("0 0 25 * * ?", "Invalid Quartz cron expression"),
        ("0 0 12 ? * 8", "day-of-week value '8'"),
        ("0 0 12 ? * 0", "day-of-week value '0'"),
        ("0 0 12 ? * 6#9", "must be 1-5"),
        ("0 0 12 LW * ?", "not supported"),
        ("0 0 12 ? * FOO", "day-of-week value 'FOO'"),
        ("", "Missing required field"),
    ],
)
def test_invalid_expressions_are_rejected_clearly(quartz: str, message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message) as e:
        sch.compile_schedule(quartz, "UTC")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"


def test_a_schedule_that_never_fires_again_is_rejected() -> None:
    with pytest.raises(InvalidParameterValue, match="never fires"):
        sch.validate("0 0 12 1 1 ? 2020", "UTC", now_ms=ms(2025, 1, 1))
    with pytest.raises(InvalidParameterValue, match="never fires"):
        sch.validate("0 0 12 31 2 ?", "UTC", now_ms=ms(2025, 1, 1))  # February 31st
    sch.validate("0 0 12 29 2 ?", "UTC", now_ms=ms(2025, 1, 1))  # leap days do come


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "GMT+25:00", "Europe/"])
def test_invalid_time_zones(tz: str) -> None:
    with pytest.raises(InvalidParameterValue, match="timezone_id"):
        sch.compile_schedule("0 0 12 * * ?", tz)


def test_time_zone_ids() -> None:
    assert sch.parse_timezone("UTC") is UTC
    assert sch.parse_timezone("GMT") is UTC
    assert sch.parse_timezone("GMT+05:30").utcoffset(None) == timedelta(hours=5, minutes=30)
    assert sch.parse_timezone("UTC-5").utcoffset(None) == timedelta(hours=-5)
    assert str(sch.parse_timezone("America/Los_Angeles")) == "America/Los_Angeles"


def test_next_fire_is_strictly_after() -> None:
    s = sch.compile_schedule("*/5 * * * * ?", "UTC")
    t = ms(2025, 1, 1, 12, 0, 0)
    assert sch.next_fire(s, t) == t + 5000
    assert sch.next_fire(s, t - 1) == t
    assert sch.next_fire(s, t + 1) == t + 5000
    assert fires("0 0 2 * * ?", "UTC", ms(2025, 1, 1, 3), 2) == [
        ms(2025, 1, 2, 2),
        ms(2025, 1, 3, 2),
    ]


def test_fixed_offsets_and_year_fields() -> None:
    assert [utc(t) for t in fires("0 0 9 * * ?", "GMT+05:30", ms(2025, 1, 1), 1)] == [
        "2025-01-01 03:30:00"
    ]
    assert [utc(t) for t in fires("0 0 0 1 1 ? 2030-2031", "UTC", ms(2025, 1, 1), 3)] == [
        "2030-01-01 00:00:00",
        "2031-01-01 00:00:00",
    ]


def test_weekdays_in_new_york_across_the_dst_change() -> None:
    # 09:00 New York, Monday to Friday: 14:00 UTC in winter, 13:00 UTC after 2025-03-09.
    got = [utc(t) for t in fires("0 0 9 ? * MON-FRI", "America/New_York", ms(2025, 3, 6), 4)]
    assert got == [
        "2025-03-06 14:00:00",  # Thursday
        "2025-03-07 14:00:00",  # Friday
        "2025-03-10 13:00:00",  # Monday, daylight saving time
        "2025-03-11 13:00:00",
    ]


def test_quartz_day_of_week_numbers() -> None:
    # Quartz: 1 = Sunday. 2025-01-05 is a Sunday.
    assert [utc(t) for t in fires("0 0 12 ? * 1", "UTC", ms(2025, 1, 1), 1)] == [
        "2025-01-05 12:00:00"
    ]
    assert [utc(t) for t in fires("0 0 12 ? * 6L", "UTC", ms(2025, 1, 1), 2)] == [
        "2025-01-31 12:00:00",  # the last Friday of January
        "2025-02-28 12:00:00",
    ]


def test_spring_forward_a_missing_wall_time_fires_shifted_once() -> None:
    # Berlin, 2025-03-30: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    got = [local(t, BERLIN) for t in fires("0 30 2 * * ?", BERLIN, ms(2025, 3, 29, 12), 3)]
    assert got == ["03-30 03:30+0200", "03-31 02:30+0200", "04-01 02:30+0200"]


def test_spring_forward_a_frequent_schedule_neither_doubles_nor_stalls() -> None:
    got = fires("0 */15 * * * ?", BERLIN, ms(2025, 3, 30, 0, 40), 4)
    assert [local(t, BERLIN) for t in got] == [
        "03-30 01:45+0100",
        "03-30 03:00+0200",
        "03-30 03:15+0200",
        "03-30 03:30+0200",
    ]
    assert {b - a for a, b in pairwise(got)} == {15 * 60_000}


def test_fall_back_a_repeated_wall_time_fires_once() -> None:
    # Berlin, 2025-10-26: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    got = [local(t, BERLIN) for t in fires("0 30 2 * * ?", BERLIN, ms(2025, 10, 25, 12), 3)]
    assert got == ["10-26 02:30+0200", "10-27 02:30+0100", "10-28 02:30+0100"]


def test_fall_back_a_frequent_schedule_fires_through_the_repeated_hour() -> None:
    got = fires("0 */15 * * * ?", BERLIN, ms(2025, 10, 25, 23, 50), 10)
    assert [local(t, BERLIN) for t in got] == [
        "10-26 02:00+0200",
        "10-26 02:15+0200",
        "10-26 02:30+0200",
        "10-26 02:45+0200",
        "10-26 02:00+0100",
        "10-26 02:15+0100",
        "10-26 02:30+0100",
        "10-26 02:45+0100",
        "10-26 03:00+0100",
        "10-26 03:15+0100",
    ]
    # From inside the repeated hour's second pass too.
    inside = ms(2025, 10, 26, 1, 5)  # 02:05 CET (second occurrence)
    assert local(fires("0 */15 * * * ?", BERLIN, inside, 1)[0], BERLIN) == "10-26 02:15+0100"
    # The daily one has already fired in the first pass: the next is tomorrow.
    assert local(fires("0 30 2 * * ?", BERLIN, inside, 1)[0], BERLIN) == "10-27 02:30+0100"


@pytest.mark.parametrize(
    ("tz", "day"),
    [
        (BERLIN, (2025, 3, 29)),
        (BERLIN, (2025, 10, 25)),
        ("America/New_York", (2025, 3, 8)),
        ("America/New_York", (2025, 11, 1)),
        ("Australia/Lord_Howe", (2025, 4, 5)),  # a 30-minute change
        ("Australia/Lord_Howe", (2025, 10, 4)),
    ],
)
def test_every_five_minutes_is_every_five_minutes_across_any_change(
    tz: str, day: tuple[int, int, int]
) -> None:
    got = fires("0 */5 * * * ?", tz, ms(*day, tz=tz), 2 * 24 * 12)
    assert {b - a for a, b in pairwise(got)} == {5 * 60_000}


def test_after_downtime_a_missed_schedule_fires_once() -> None:
    s = sch.compile_schedule("0 * * * * ?", "UTC")  # every minute
    nxt = ms(2025, 1, 1, 12, 1)
    # Not due yet: nothing, and the next fire time stays.
    assert sch.catch_up(s, nxt, nxt - 1) == (None, nxt)
    # Down for three hours (180 missed fire times): one run, then the first fire after now.
    now = ms(2025, 1, 1, 15, 0, 30)
    fire, new_next = sch.catch_up(s, nxt, now)
    assert fire == nxt
    assert new_next == ms(2025, 1, 1, 15, 1)
    # The same instant again: nothing more is due.
    assert sch.catch_up(s, new_next, now) == (None, new_next)
    # A paused or finished schedule (no next fire time) never fires.
    assert sch.catch_up(s, None, now) == (None, None)
