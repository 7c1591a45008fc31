"""ARM's request limits as the control plane keeps to them (shared/domain/arm_budget.py)."""

from __future__ import annotations

import pytest

from shared.domain.arm_budget import (
    CONFIRM_HOLD_S,
    RESERVE,
    Admission,
    Budget,
    ReadPriorities,
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
    assert waits == pytest.approx([1.0, 2.0, 3.0])  # a second per create ahead
    assert [a.waiting(f"c{i}") for i in range(3)] == [True] * 3
    # c1 comes back first, but c0 is ahead of it in ws; another workspace is not.
    assert a.admit("ws", "c1", 0.25, b, cost) > 0
    assert a.admit("ws", "c0", 0.25, b, cost) == 0
    assert not a.waiting("c0")
    b.take("writes", 0.25)
    assert a.admit("other", "d0", 0.35, b, cost) == 0
    b.take("writes", 0.35)
    assert a.admit("ws", "c1", 0.45, b, cost) == 0


def test_a_create_waits_for_the_reads_it_will_need() -> None:
    b = Budget.new(0.0)
    b.remaining("reads", READS_KEPT + 10, 0.0)  # in-flight creates are reading
    a = Admission()
    assert a.admit("ws", "c0", 0.0, b) == 1.0  # 24 reads needed: 14 more in 0.56 s
    assert a.admit("ws", "c0", 0.5, b) > 0
    assert a.admit("ws", "c0", 0.6, b) == 0


def test_a_create_not_asked_for_again_leaves_the_queue() -> None:
    b = Budget.new(0.0)
    a = Admission(stale_s=60)
    b.remaining("writes", 0, 0.0)
    a.admit("ws", "gone", 0.0, b, {"writes": 1})
    assert a.admit("ws", "next", 0.0, b, {"writes": 1}) > 0
    assert a.admit("ws", "next", 61.0, b, {"writes": 1}) == 0


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
