"""ARM's request limits as the control plane keeps to them (shared/domain/arm_budget.py)."""

from __future__ import annotations

import pytest

from shared.domain.arm_budget import (
    CONFIRM_HOLD_S,
    CREATE_COST,
    RESERVE,
    Admission,
    Budget,
    ReadPriorities,
    admission_burst,
    admission_rate,
    kind_of,
    retry_after_s,
)

# What a transition leaves in each bucket for confirmations (25 writes, 31.25 reads).
WRITES_KEPT = RESERVE["transition"] * 200
READS_KEPT = RESERVE["transition"] * 250


def test_the_documented_buckets_and_refills() -> None:
    b = Budget.new(0.0)
    assert [(x.size, x.refill_per_s) for x in b.buckets.values()] == [
        (250, 25),
        (200, 10),
        (200, 10),
    ]
    for _ in range(250):
        assert b.take("reads", 0.0) == 0
    assert b.take("reads", 0.0) == 1 / 25  # the next token in 40 ms
    assert b.take("reads", 1.0) == 0  # 25 back after a second
    assert b.available("reads", 1.0) == 24


def test_the_headers_say_what_arm_has_left() -> None:
    b = Budget.new(0.0)
    b.remaining("writes", 3, 0.0)  # other instances spent the rest
    assert [b.take("writes", 0.0) for _ in range(4)] == [0, 0, 0, 0.1]
    b.remaining("writes", 150, 0.0)  # never more than the copy holds
    assert b.available("writes", 0.0) == 0


def test_a_429_shuts_the_bucket_for_its_retry_after() -> None:
    b = Budget.new(0.0)
    b.throttled("deletes", 5, 0.0)
    assert b.take("deletes", 4.0) > 1
    assert b.take("deletes", 5.2) == 0
    assert b.take("reads", 0.0) == 0  # other kinds are not affected


def test_kinds_and_retry_after() -> None:
    assert [kind_of(m) for m in ("GET", "head", "PUT", "PATCH", "POST", "DELETE")] == [
        "reads",
        "reads",
        "writes",
        "writes",
        "writes",
        "deletes",
    ]
    assert retry_after_s("7") == 7
    assert retry_after_s(None) == 1
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 1


def test_creates_are_admitted_fifo_per_workspace_at_the_rate_arm_allows() -> None:
    b = Budget.new(0.0)
    b.remaining("writes", WRITES_KEPT, 0.0)  # the confirmations' reserve, nothing beyond
    a = Admission()
    cost = {"writes": 1}
    waits = [a.admit("ws", f"c{i}", 0.0, b, cost) for i in range(3)]
    assert waits == pytest.approx([0.1, 0.2, 0.3])  # a write each, at 10 writes a second
    assert [a.waiting(f"c{i}") for i in range(3)] == [True] * 3
    # c1 comes back first, but c0 is ahead of it in ws; another workspace is not.
    assert a.admit("ws", "c1", 0.25, b, cost) > 0
    assert a.admit("ws", "c0", 0.25, b, cost) == 0
    assert not a.waiting("c0")
    b.take("writes", 0.25)
    assert a.admit("other", "d0", 0.35, b, cost) == 0
    b.take("writes", 0.35)
    assert a.admit("ws", "c1", 0.45, b, cost) == 0


def test_creates_are_paced_at_the_read_refill_after_a_full_buckets_worth() -> None:
    """A create's reads come over its start, a few per reconcile: creates are admitted one
    per 24 / 25 s (the reads a create costs at ARM's read refill), after as many at once as
    a full bucket pays for beyond the reserve, not when the bucket holds all 24 at once."""
    b = Budget.new(0.0)
    a = Admission()
    assert admission_burst(b) == pytest.approx((250 - READS_KEPT) / 24)
    at_once = [a.admit(f"w{i}", f"c{i}", 0.0, b) for i in range(12)]
    assert at_once[:10] == [0.0] * 10  # start -8.75 s, then +0.96 s each: ten at or before 0
    assert at_once[10] == pytest.approx(0.85, abs=0.001)  # the pace's next moment
    assert at_once[11] == pytest.approx(0.85 + 0.96, abs=0.001)  # and one more ahead
    assert a.admit("w10", "c10", 0.85, b) == 0
    # Only the reserve left: a create waits for a read beyond it, not for 24.
    b2 = Budget.new(0.0)
    b2.remaining("reads", READS_KEPT, 0.0)
    assert Admission().admit("ws", "c0", 0.0, b2) == pytest.approx(0.04)


def test_a_create_not_asked_for_again_leaves_the_queue() -> None:
    b = Budget.new(0.0)
    a = Admission(stale_s=60)
    b.remaining("writes", 0, 0.0)
    assert a.admit("ws", "gone", 0.0, b, {"writes": 1}) == pytest.approx(2.6)
    assert a.admit("ws", "next", 0.0, b, {"writes": 1}) > 0
    # "gone" was told 2.6 s; sixty seconds after that it is forgotten.
    assert a.admit("ws", "next", 62.0, b, {"writes": 1}) > 0
    assert a.waiting("gone")
    assert a.admit("ws", "next", 63.0, b, {"writes": 1}) == 0
    assert not a.waiting("gone")


def test_refused_creates_come_back_one_after_the_other_at_the_admission_rate() -> None:
    """Twenty workspaces with ten creates each, the buckets empty: every refused create is
    told a different time, 1 / rate apart in the order they were asked for, and those ahead
    in a workspace always come back before those behind them."""
    b = Budget.new(0.0)
    for k in ("reads", "writes"):
        b.remaining(k, 0, 0.0)
    a = Admission()
    rate = admission_rate(b)
    assert rate == pytest.approx(25 / 24)  # reads decide: 24 a create at 25 a second
    # The first create's tokens: its 2 writes above the reserve, at 10 a second.
    first = (RESERVE["transition"] * 200 + 2) / 10
    told: dict[str, float] = {}
    for i in range(10):
        for w in range(20):
            told[f"w{w}-c{i}"] = a.admit(f"w{w}", f"w{w}-c{i}", 0.0, b)
    order = list(told)
    assert [told[c] for c in order] == pytest.approx([first + k / rate for k in range(len(order))])
    assert len(set(told.values())) == len(told)  # nobody comes back together
    # Each comes back when told: the one at the head goes, and the next, told later, is
    # again told a time after every one still ahead of it.
    now = 0.0
    admitted: list[str] = []
    pending = sorted(told.items(), key=lambda kv: kv[1])
    refused = 0
    while pending:
        cid, at = pending.pop(0)
        now = max(now, at)
        wait = a.admit(cid.split("-")[0], cid, now, b)
        if wait == 0:
            admitted.append(cid)
            for k, n in CREATE_COST.items():  # its requests take the tokens
                for _ in range(n):
                    b.take(k, now)
        else:
            refused += 1
            pending.append((cid, now + wait))
            pending.sort(key=lambda kv: kv[1])
    assert admitted == order  # FIFO per workspace (and, here, overall)
    assert refused < len(order) // 10  # almost every create goes at its first return


def test_refused_callers_come_back_spread_at_the_refill_rate() -> None:
    b = Budget.new(0.0)
    b.remaining("reads", 0, 0.0)
    assert [b.take("reads", 0.0) for _ in range(3)] == pytest.approx([0.04, 0.08, 0.12])
    # A caller that needs six tokens at once waits for six, behind the others.
    assert b.need("reads", 6, 0.0, "confirm") == pytest.approx(0.24)


def test_suspects_read_first_then_transitions_and_drift_only_from_a_half_full_bucket() -> None:
    b = Budget.new(0.0)
    b.remaining("reads", 100, 0.0)
    assert b.need("reads", 6, 0.0, "confirm") == 0
    assert b.need("reads", 6, 0.0, "transition") == 0
    assert b.need("reads", 6, 0.0, "drift") > 0  # 131 needed: half the bucket stays
    b.remaining("reads", 20, 0.0)
    assert b.need("reads", 6, 0.0, "transition") > 0  # the last eighth is the suspects'
    assert b.need("reads", 6, 0.0, "confirm") == 0


def test_a_suspect_is_not_queued_behind_a_burst_of_refused_reconciles() -> None:
    b = Budget.new(0.0)
    b.remaining("reads", 0, 0.0)
    waits = [b.need("reads", 6, 0.0) for _ in range(1000)]
    assert waits[-1] > 200  # a thousand reconciles come back over four minutes
    assert b.need("reads", 6, 0.0, "confirm") == pytest.approx(0.24)


def test_read_priorities_hold_a_suspect_and_use_a_drift_mark_once() -> None:
    p = ReadPriorities()
    assert p.take("c", 0.0) == "transition"
    p.mark("c", "silent", 0.0)
    p.mark("c", "drift", 1.0)  # still a suspect: not downgraded
    assert [p.take("c", t) for t in (1.0, 5.0)] == ["confirm", "confirm"]
    assert p.take("c", CONFIRM_HOLD_S) == "transition"
    p.mark("d", "drift", 0.0)
    assert [p.take("d", 0.0), p.take("d", 0.0)] == ["drift", "transition"]
    p.mark("e", "bulk", 0.0)
    assert p.take("e", 1.0) == "confirm"
