"""Contract of the `Bus` and `Receiver` ports: Service Bus semantics every adapter keeps.

Each adapter is one param of `bus_factory`. Time is a fake clock (epoch ms) that the tests move,
so lock expiry and scheduled messages need no sleeping.

Adapters and what each is held to:

- The embedded bus (`shared/adapters/embedded_bus.py`) implements both sides and passes every
  test here.
- The Service Bus adapter (`shared/adapters/servicebus.py`) only sends: receiving, locks,
  settlement, dead-lettering and durability are the broker's and the Functions host's. No
  Service Bus broker can run here (the emulator needs Docker; nothing else speaks its AMQP
  dialect), so the tests marked `@send_side` run with the adapter's sender factory returning a
  `WireSender`: it takes the real `azure.servicebus.ServiceBusMessage` objects the adapter hands
  to `send_messages`, encodes each with the SDK's own AMQP encoder (the bytes the SDK would
  put on the link), decodes them, and enqueues what the frame carries (data, properties.
  message_id, properties.group_id = the session, the `x-opt-scheduled-enqueue-time`
  annotation, application properties) into an embedded bus that plays the broker. Those tests
  then check the semantics that rest on what the sender hands over: FIFO per session and
  sessions independent of each other, scheduled delivery to the millisecond, duplicate
  detection by message id (ids over Service Bus's 128 characters included), body bytes and
  application properties unchanged, and queues kept apart.
  Not covered for Service Bus: the broker's own behaviour (that it honours those fields as the
  embedded bus does is Microsoft's documented contract, not tested here), the queue's
  configuration (sessions and duplicate detection enabled, the window: infra/), connection
  and authentication, and the SDK's transport below the encoded message (links, retries,
  batching limits). The SDK's private encoder is pinned with azure-servicebus in
  requirements.txt; a new SDK version that moves it makes these tests fail, not pass.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus._pyamqp._decode import decode_payload
from azure.servicebus._pyamqp._encode import encode_payload
from azure.servicebus._pyamqp.message import Message as AmqpMessage
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport

from shared.adapters.embedded_bus import EmbeddedBus
from shared.adapters.servicebus import MAX_ID_LEN, ServiceBusSender
from shared.domain.cluster import Cluster, ClusterSpec
from shared.ports import Delivery, LockLost, OutMessage
from shared.services.messages import reconcile_message
from tests.support import FakeClock

REPO = Path(__file__).resolve().parents[2]
Q = "work"
LOCK_S = 30.0
LOCK_MS = 30_000
MAX_DELIVERIES = 10
WINDOW_S = 600


@dataclass(frozen=True)
class BusAdapter:
    name: str
    # Opens (or reopens) the bus stored under `path`.
    open: Callable[..., Any]
    # Python statements that open the same bus in a child process as `bus` (`path` is set).
    child_open: str


ADAPTERS = [
    BusAdapter(
        name="embedded",
        open=lambda path, **kw: EmbeddedBus(path / "bus.sqlite", **kw),
        child_open=(
            "from shared.adapters.embedded_bus import EmbeddedBus\n"
            "bus = EmbeddedBus(path / 'bus.sqlite')\n"
        ),
    ),
]

BusFactory = Callable[..., Any]


@pytest.fixture
def bus_clock() -> FakeClock:
    return FakeClock(time.time_ns() // 1_000_000)  # near the wall clock, moved only by tests


@pytest.fixture(params=ADAPTERS, ids=lambda a: a.name)
def bus_adapter(request: pytest.FixtureRequest) -> BusAdapter:
    return request.param


@pytest.fixture
def bus_factory(
    bus_adapter: BusAdapter, tmp_path: Path, bus_clock: FakeClock
) -> Iterator[BusFactory]:
    """Opens the bus of this test (the same storage each call) on the fake clock."""
    opened: list[Any] = []

    def make(**kw: Any) -> Any:
        kw.setdefault("clock", bus_clock)
        kw.setdefault("lock_s", LOCK_S)
        kw.setdefault("max_delivery_count", MAX_DELIVERIES)
        kw.setdefault("duplicate_window_s", WINDOW_S)
        bus = bus_adapter.open(tmp_path, **kw)
        opened.append(bus)
        return bus

    yield make
    for bus in opened:
        with contextlib.suppress(Exception):
            bus.close()


def on_the_wire(m: ServiceBusMessage) -> AmqpMessage:
    """The AMQP message the SDK would send for `m`: encoded by the SDK, decoded back."""
    outgoing = PyamqpTransport.to_outgoing_amqp_message(m.raw_amqp_message)
    return decode_payload(memoryview(encode_payload(bytearray(), outgoing)))


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class WireSender:
    """Stands where `azure.servicebus.ServiceBusSender` is: each `send_messages` call is one
    send to the broker (an embedded bus), of what the encoded AMQP messages carry."""

    def __init__(self, queue: str, broker: EmbeddedBus, wire: list[tuple[str, AmqpMessage]]):
        self.queue, self.broker, self.wire = queue, broker, wire

    def send_messages(self, message: Any, *, timeout: float | None = None) -> None:
        batch = message if isinstance(message, list) else [message]
        out = []
        for m in batch:
            assert isinstance(m, ServiceBusMessage)
            amqp = on_the_wire(m)
            self.wire.append((self.queue, amqp))
            props = amqp.properties
            assert props is not None
            scheduled = (amqp.message_annotations or {}).get(b"x-opt-scheduled-enqueue-time")
            out.append(
                OutMessage(
                    body=b"".join(amqp.data or []),
                    message_id=_text(props.message_id),
                    session_id=_text(props.group_id),
                    scheduled_enqueue_ms=scheduled,
                    application_properties={
                        _text(k): _text(v) for k, v in (amqp.application_properties or {}).items()
                    },
                )
            )
        self.broker.send(self.queue, out)

    def schedule_messages(self, messages: Any, schedule_time_utc: Any, **kw: Any) -> list[int]:
        raise AssertionError("the adapter sends scheduled messages with send_messages")

    def close(self) -> None:
        pass


class ServiceBusThroughWire:
    """The Service Bus adapter sending, the broker receiving (see the module docstring)."""

    def __init__(self, broker: EmbeddedBus) -> None:
        self.broker = broker
        self.wire: list[tuple[str, AmqpMessage]] = []
        self.adapter = ServiceBusSender(lambda q: WireSender(q, broker, self.wire))

    def send(self, queue: str, messages: list[OutMessage]) -> None:
        self.adapter.send(queue, messages)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.broker, name)  # receiving is the broker's


@pytest.fixture
def bus(request: pytest.FixtureRequest, bus_factory: BusFactory) -> Any:
    """The adapter under test; `@send_side` tests also get the Service Bus adapter."""
    broker = bus_factory()
    if getattr(request, "param", "embedded") == "servicebus":
        return ServiceBusThroughWire(broker)
    return broker


# The tests of what a sender alone decides: they run against the Service Bus adapter as well.
send_side = pytest.mark.parametrize(
    "bus", ["embedded", "servicebus"], indirect=True, ids=["self", "servicebus-sender"]
)


def msg(
    message_id: str,
    body: bytes | None = None,
    *,
    session: str | None = None,
    at: int | None = None,
    props: dict[str, str | int] | None = None,
) -> OutMessage:
    return OutMessage(
        body=body if body is not None else message_id.encode(),
        message_id=message_id,
        session_id=session,
        scheduled_enqueue_ms=at,
        application_properties=props or {},
    )


def receive(bus: Any, queue: str = Q) -> Delivery:
    d = bus.receive(queue)
    assert d is not None, "expected a message"
    return d


def drain_ids(bus: Any, queue: str = Q) -> list[str]:
    """Receive and complete everything receivable now, in order."""
    ids = []
    while (d := bus.receive(queue)) is not None:
        ids.append(d.message_id)
        bus.complete(d)
    return ids


# --------------------------------------------------------------------------------------------
# Peek-lock basics


@send_side
def test_send_receive_complete(bus: Any, bus_clock: FakeClock) -> None:
    sent_at = bus_clock.ms
    bus.send(Q, [msg("m1", b"\x00payload\xff", props={"kind": "create", "attempt": 3})])
    bus_clock.advance(5)

    d = receive(bus)
    assert d.queue == Q
    assert d.message_id == "m1"
    assert d.body == b"\x00payload\xff"
    assert d.session_id is None
    assert d.delivery_count == 1
    assert d.enqueued_ms == sent_at
    assert d.scheduled_enqueue_ms is None
    assert d.lock_token
    assert d.locked_until_ms == bus_clock.ms + LOCK_MS
    assert dict(d.application_properties) == {"kind": "create", "attempt": 3}
    assert d.dead_letter_reason is None

    assert bus.receive(Q) is None, "a locked message is not delivered twice"
    bus.complete(d)
    assert bus.receive(Q) is None
    bus_clock.advance(LOCK_MS * 2)
    assert bus.receive(Q) is None, "a completed message never comes back"
    with pytest.raises(LockLost):
        bus.complete(d)


@send_side
def test_order_by_sequence_and_queues_are_separate(bus: Any) -> None:
    bus.send(Q, [msg("a"), msg("b")])
    bus.send("other", [msg("x")])
    bus.send(Q, [msg("c")])
    first, second, third = receive(bus), receive(bus), receive(bus)
    assert [first.message_id, second.message_id, third.message_id] == ["a", "b", "c"]
    assert first.sequence_number < second.sequence_number < third.sequence_number
    assert bus.receive(Q) is None
    assert drain_ids(bus, "other") == ["x"]
    assert bus.receive("empty") is None


def test_abandon_redelivers_with_higher_delivery_count(bus: Any) -> None:
    bus.send(Q, [msg("m1"), msg("m2")])
    d1 = receive(bus)
    bus.abandon(d1, reason="ValueError: boom")
    again = receive(bus)
    assert again.message_id == "m1", "an abandoned message keeps its place in the queue"
    assert again.delivery_count == 2
    assert again.lock_token != d1.lock_token
    with pytest.raises(LockLost):
        bus.complete(d1)
    with pytest.raises(LockLost):
        bus.abandon(d1)
    bus.complete(again)
    assert drain_ids(bus) == ["m2"]


def test_lock_expiry_redelivers_and_old_token_is_lost(bus: Any, bus_clock: FakeClock) -> None:
    bus.send(Q, [msg("m1")])
    d = receive(bus)
    bus_clock.advance(LOCK_MS - 1)
    assert bus.receive(Q) is None, "still locked one ms before the lock ends"
    bus_clock.advance(1)

    # Expired but not taken yet: the holder has lost it all the same.
    for op in (bus.complete, bus.abandon, bus.renew_lock):
        with pytest.raises(LockLost):
            op(d)
    with pytest.raises(LockLost):
        bus.dead_letter(d, reason="late")

    again = receive(bus)
    assert again.message_id == "m1"
    assert again.delivery_count == 2
    assert again.lock_token != d.lock_token
    with pytest.raises(LockLost):
        bus.complete(d)
    bus.complete(again)
    assert bus.receive(Q) is None


def test_renew_lock_extends(bus: Any, bus_clock: FakeClock) -> None:
    bus.send(Q, [msg("m1")])
    d = receive(bus)
    bus_clock.advance(20_000)
    renewed = bus.renew_lock(d)
    assert renewed.locked_until_ms == bus_clock.ms + LOCK_MS
    assert renewed.lock_token == d.lock_token
    assert renewed.delivery_count == 1
    bus_clock.advance(20_000)  # past the first lock's end, within the renewed one
    assert bus.receive(Q) is None
    bus.complete(renewed)
    bus_clock.advance(LOCK_MS)
    assert bus.receive(Q) is None


# --------------------------------------------------------------------------------------------
# Dead letters


def test_dead_letter_after_max_deliveries_blocks_nothing(bus: Any) -> None:
    bus.send(Q, [msg("poison", session="s1"), msg("next-in-s1", session="s1"), msg("free")])
    for attempt in range(1, MAX_DELIVERIES + 1):
        d = receive(bus)
        assert (d.message_id, d.delivery_count) == ("poison", attempt)
        bus.abandon(d, reason=f"RuntimeError: attempt {attempt}")

    [dead] = bus.dead_letters(Q)
    assert dead.message_id == "poison"
    assert dead.session_id == "s1"
    assert dead.delivery_count == MAX_DELIVERIES
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert dead.dead_letter_description is not None
    assert "RuntimeError: attempt 10" in dead.dead_letter_description
    # The session continues with its next message; the other message was never blocked.
    assert drain_ids(bus) == ["next-in-s1", "free"]


def test_dead_letter_when_locks_keep_expiring(bus: Any, bus_clock: FakeClock) -> None:
    bus.send(Q, [msg("stuck", session="s1"), msg("after", session="s1")])
    for attempt in range(1, MAX_DELIVERIES + 1):
        d = receive(bus)
        assert (d.message_id, d.delivery_count) == ("stuck", attempt)
        bus_clock.advance(LOCK_MS)  # the handler "hangs" past its lock
    # The 11th delivery would exceed the limit: dead-lettered, and the receive moves on.
    nxt = receive(bus)
    assert nxt.message_id == "after"
    assert nxt.delivery_count == 1
    [dead] = bus.dead_letters(Q)
    assert dead.message_id == "stuck"
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"


def test_explicit_dead_letter_and_resubmit(bus: Any) -> None:
    bus.send(Q, [msg("bad", b"body", session="s", props={"k": "v"}), msg("good", session="s")])
    d = receive(bus)
    bus.dead_letter(d, reason="ValidationFailed", description="no such workspace")
    with pytest.raises(LockLost):
        bus.complete(d)
    assert drain_ids(bus) == ["good"]
    assert bus.receive(Q) is None

    [dead] = bus.dead_letters(Q)
    assert (dead.message_id, dead.body, dead.session_id) == ("bad", b"body", "s")
    assert dict(dead.application_properties) == {"k": "v"}
    assert dead.dead_letter_reason == "ValidationFailed"
    assert dead.dead_letter_description == "no such workspace"
    assert dead.delivery_count == 1
    assert bus.dead_letters("other") == []

    assert bus.resubmit_dead_letter("other", dead.sequence_number) is False
    assert bus.resubmit_dead_letter(Q, dead.sequence_number + 1000) is False
    assert bus.resubmit_dead_letter(Q, dead.sequence_number) is True
    assert bus.dead_letters(Q) == []
    assert bus.resubmit_dead_letter(Q, dead.sequence_number) is False, "resubmitted once only"

    back = receive(bus)
    assert (back.message_id, back.body, back.session_id) == ("bad", b"body", "s")
    assert back.delivery_count == 1, "a resubmitted message starts counting again"
    assert back.dead_letter_reason is None
    assert dict(back.application_properties) == {"k": "v"}
    bus.complete(back)
    assert bus.receive(Q) is None


def test_purge_dead_letters(bus: Any) -> None:
    bus.send(Q, [msg("a"), msg("b"), msg("live")])
    for _ in range(2):
        bus.dead_letter(receive(bus), reason="Bad")
    a, b = bus.dead_letters(Q)
    assert bus.purge_dead_letters("other") == 0
    assert bus.purge_dead_letters(Q, b.sequence_number + 1000) == 0
    assert bus.purge_dead_letters(Q, a.sequence_number) == 1
    assert [d.message_id for d in bus.dead_letters(Q)] == ["b"]
    assert bus.purge_dead_letters(Q) == 1
    assert bus.dead_letters(Q) == []
    assert drain_ids(bus) == ["live"], "active messages are not purged"


def test_resubmitted_message_gets_full_delivery_budget(bus: Any) -> None:
    bus.send(Q, [msg("m")])
    for _ in range(MAX_DELIVERIES):
        bus.abandon(receive(bus))
    [dead] = bus.dead_letters(Q)
    assert bus.resubmit_dead_letter(Q, dead.sequence_number)
    for attempt in range(1, MAX_DELIVERIES + 1):
        d = receive(bus)
        assert d.delivery_count == attempt
        bus.abandon(d)
    assert [d.message_id for d in bus.dead_letters(Q)] == ["m"]
    assert bus.receive(Q) is None


# --------------------------------------------------------------------------------------------
# Sessions


@send_side
def test_sessions_fifo_one_in_flight_others_proceed(bus: Any) -> None:
    bus.send(
        Q,
        [
            msg("a1", session="A"),
            msg("a2", session="A"),
            msg("b1", session="B"),
            msg("n1"),
            msg("a3", session="A"),
            msg("b2", session="B"),
            msg("n2"),
        ],
    )
    a1 = receive(bus)
    b1 = receive(bus)
    n1 = receive(bus)
    n2 = receive(bus)
    assert [a1.message_id, b1.message_id, n1.message_id, n2.message_id] == ["a1", "b1", "n1", "n2"]
    assert bus.receive(Q) is None, "both sessions have a message in flight"

    bus.complete(b1)
    b2 = receive(bus)
    assert b2.message_id == "b2", "session B moves on while A is still in flight"
    assert bus.receive(Q) is None

    bus.abandon(a1)
    again = receive(bus)
    assert (again.message_id, again.delivery_count) == ("a1", 2), "FIFO: a1 before a2"
    assert bus.receive(Q) is None
    bus.complete(again)
    a2 = receive(bus)
    assert a2.message_id == "a2"
    bus.complete(a2)
    assert receive(bus).message_id == "a3"
    for d in (b2, n1, n2):
        bus.complete(d)


def test_session_lock_expiry_keeps_fifo(bus: Any, bus_clock: FakeClock) -> None:
    bus.send(Q, [msg("s1", session="S"), msg("s2", session="S")])
    first = receive(bus)
    assert bus.receive(Q) is None
    bus_clock.advance(LOCK_MS)
    again = receive(bus)
    assert (again.message_id, again.delivery_count) == ("s1", 2)
    bus.complete(again)
    assert drain_ids(bus) == ["s2"]
    with pytest.raises(LockLost):
        bus.complete(first)


# --------------------------------------------------------------------------------------------
# Scheduled messages and duplicate detection


@send_side
def test_scheduled_message_invisible_until_its_time(bus: Any, bus_clock: FakeClock) -> None:
    at = bus_clock.ms + 5_000
    bus.send(Q, [msg("later", at=at), msg("now")])
    assert drain_ids(bus) == ["now"], "a scheduled message does not hold up later ones"
    bus_clock.advance(4_999)
    assert bus.receive(Q) is None
    bus_clock.advance(1)
    d = receive(bus)
    assert d.message_id == "later"
    assert d.scheduled_enqueue_ms == at
    assert d.delivery_count == 1
    bus.complete(d)


@send_side
def test_scheduled_message_in_a_session(bus: Any, bus_clock: FakeClock) -> None:
    bus.send(Q, [msg("s-late", session="S", at=bus_clock.ms + 1_000), msg("s-now", session="S")])
    assert drain_ids(bus) == ["s-now"]
    bus_clock.advance(1_000)
    assert drain_ids(bus) == ["s-late"]


@send_side
def test_duplicate_detection_within_window(bus: Any, bus_clock: FakeClock) -> None:
    bus.send(Q, [msg("dup", b"first"), msg("dup", b"same batch")])
    bus.send(Q, [msg("dup", b"second")])
    bus.send("other", [msg("dup", b"other queue")])
    d = receive(bus)
    assert d.body == b"first"
    bus.complete(d)
    assert bus.receive(Q) is None
    assert drain_ids(bus, "other") == ["dup"]

    bus_clock.advance(WINDOW_S * 1000 - 1)
    bus.send(Q, [msg("dup", b"still within")])
    assert bus.receive(Q) is None, "completed, but its id is remembered for the window"

    bus_clock.advance(1)
    bus.send(Q, [msg("dup", b"after window")])
    d = receive(bus)
    assert d.body == b"after window"
    bus.complete(d)
    bus.send(Q, [msg("dup", b"window restarts")])
    assert bus.receive(Q) is None


# --------------------------------------------------------------------------------------------
# Durability and recovery


def test_release_all_locks(bus: Any) -> None:
    bus.send(Q, [msg("a", session="S"), msg("b", session="S"), msg("c")])
    a, c = receive(bus), receive(bus)
    assert (a.message_id, c.message_id) == ("a", "c")
    assert bus.release_all_locks() == 2
    with pytest.raises(LockLost):
        bus.complete(a)
    a2, c2 = receive(bus), receive(bus)
    assert (a2.message_id, a2.delivery_count) == ("a", 2), "the count is kept, not reset"
    assert (c2.message_id, c2.delivery_count) == ("c", 2)
    assert bus.release_all_locks() == 2
    assert bus.release_all_locks() == 0


def test_durable_across_reopen(bus_factory: BusFactory, bus_clock: FakeClock) -> None:
    bus = bus_factory()
    bus.send(Q, [msg("locked"), msg("plain", session="S"), msg("later", at=bus_clock.ms + 60_000)])
    bus.send(Q, [msg("dead")])
    locked = receive(bus)
    plain = receive(bus)
    dead = receive(bus)
    bus.abandon(plain)
    bus.dead_letter(dead, reason="R", description="D")
    bus.close()

    bus = bus_factory()
    assert bus.counts(Q) == {"active": 1, "scheduled": 1, "locked": 1, "dead_lettered": 1}
    bus.complete(locked)  # the lock survives the reopen
    d = receive(bus)
    assert (d.message_id, d.delivery_count) == ("plain", 2)
    bus.complete(d)
    [dl] = bus.dead_letters(Q)
    assert (dl.message_id, dl.dead_letter_reason, dl.dead_letter_description) == ("dead", "R", "D")
    bus.send(Q, [msg("locked")])
    assert bus.receive(Q) is None, "duplicate detection remembers ids across a reopen"
    bus_clock.advance(60_000)
    assert drain_ids(bus) == ["later"]


def test_survives_kill_9(bus_adapter: BusAdapter, bus_factory: BusFactory, tmp_path: Path) -> None:
    n = 300
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from shared.ports import OutMessage\n"
        f"path = Path({str(tmp_path)!r})\n"
        f"{bus_adapter.child_open}"
        f"n = {n}\n"
        "for i in range(0, n // 2):\n"
        f"    bus.send({Q!r}, [OutMessage(body=b'%d' % i, message_id=f'm{{i}}',"
        " session_id=f's{i % 7}')])\n"
        "batch = [OutMessage(body=b'%d' % i, message_id=f'm{i}') for i in range(n // 2, n)]\n"
        f"bus.send({Q!r}, batch)\n"
        f"d = bus.receive({Q!r})\n"
        "print(d.message_id, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.strip() == "m0"

    bus = bus_factory()
    assert bus.counts(Q)["locked"] == 1, "the dead process's lock is still on disk"
    assert bus.release_all_locks() == 1
    got: dict[str, Delivery] = {}
    while (d := bus.receive(Q)) is not None:
        assert d.message_id not in got
        got[d.message_id] = d
        bus.complete(d)
    assert set(got) == {f"m{i}" for i in range(n)}
    assert all(got[f"m{i}"].body == str(i).encode() for i in range(n))
    assert got["m0"].delivery_count == 2
    assert sum(d.delivery_count for d in got.values()) == n + 1


# --------------------------------------------------------------------------------------------
# Concurrency


def test_many_threads_complete_each_message_once_in_session_order(bus: Any) -> None:
    sessions, per_session, threads = 20, 100, 4
    total = sessions * per_session
    for start in range(0, per_session, 25):
        bus.send(
            Q,
            [
                msg(f"{s}-{i}", f"{s}:{i}".encode(), session=f"s{s}")
                for i in range(start, start + 25)
                for s in range(sessions)
            ],
        )

    guard = threading.Lock()
    received: list[tuple[str, int]] = []  # in the order the bus handed them out
    completed: list[str] = []
    in_flight: set[str | None] = set()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            while True:
                with guard:
                    if len(completed) >= total:
                        return
                d = bus.receive(Q)
                if d is None:
                    time.sleep(0.001)
                    continue
                session, index = d.body.decode().split(":")
                with guard:
                    assert d.session_id not in in_flight, "two in flight in one session"
                    in_flight.add(d.session_id)
                    received.append((session, int(index)))
                with guard:
                    in_flight.discard(d.session_id)
                bus.complete(d)
                with guard:
                    completed.append(d.message_id)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert not errors, errors
    assert not any(t.is_alive() for t in pool)
    assert sorted(completed) == sorted(f"{s}-{i}" for s in range(sessions) for i in range(100))
    for s in range(sessions):
        order = [i for (session, i) in received if session == str(s)]
        assert order == list(range(per_session)), f"session {s} out of order"
    assert bus.receive(Q) is None
    assert bus.counts(Q) == {"active": 0, "scheduled": 0, "locked": 0, "dead_lettered": 0}


# --------------------------------------------------------------------------------------------
# Extras the local host uses (wait, next_visible_ms, counts)


def test_counts_and_next_visible(bus: Any, bus_clock: FakeClock) -> None:
    if not hasattr(bus, "next_visible_ms"):
        pytest.skip("not a local-host bus")
    t0 = bus_clock.ms
    assert bus.next_visible_ms(Q) is None
    at = t0 + 60_000
    bus.send(Q, [msg("a"), msg("b"), msg("later", at=at)])
    assert bus.counts(Q) == {"active": 2, "scheduled": 1, "locked": 0, "dead_lettered": 0}
    assert bus.next_visible_ms(Q) == at
    a = receive(bus)
    assert bus.next_visible_ms(Q) == t0 + LOCK_MS, "a's lock ends before 'later' shows"
    bus.dead_letter(receive(bus), reason="x")
    assert bus.counts(Q) == {"active": 0, "scheduled": 1, "locked": 1, "dead_lettered": 1}
    bus_clock.advance(15_000)
    bus.renew_lock(a)
    assert bus.next_visible_ms(Q) == t0 + 15_000 + LOCK_MS
    bus_clock.advance(LOCK_MS)
    assert bus.counts(Q) == {"active": 1, "scheduled": 1, "locked": 0, "dead_lettered": 1}
    assert bus.next_visible_ms(Q) == at
    bus.complete(receive(bus))
    bus_clock.advance(at - bus_clock.ms)
    assert bus.next_visible_ms(Q) is None
    assert bus.counts(Q) == {"active": 1, "scheduled": 0, "locked": 0, "dead_lettered": 1}


def test_wait_wakes_on_send_and_loses_no_signal(bus: Any) -> None:
    if not hasattr(bus, "wait"):
        pytest.skip("not a local-host bus")
    t0 = time.monotonic()
    bus.wait(Q, 0.05)
    assert time.monotonic() - t0 >= 0.04, "nothing sent: waits out the timeout"

    # A send between an empty receive and the wait is not lost.
    assert bus.receive(Q) is None
    bus.send(Q, [msg("m1")])
    t0 = time.monotonic()
    bus.wait(Q, 5)
    assert time.monotonic() - t0 < 1
    bus.complete(receive(bus))

    # A send from another thread wakes a waiter at once.
    assert bus.receive(Q) is None
    timer = threading.Timer(0.1, lambda: bus.send(Q, [msg("m2")]))
    timer.start()
    t0 = time.monotonic()
    bus.wait(Q, 5)
    woke = time.monotonic() - t0
    timer.join()
    assert 0.05 <= woke < 2
    assert receive(bus).message_id == "m2"

    # A send to another queue does not wake this one.
    t0 = time.monotonic()
    threading.Timer(0.01, lambda: bus.send("other", [msg("x")])).start()
    bus.wait(Q, 0.2)
    assert time.monotonic() - t0 >= 0.15


def test_wait_wakes_when_a_session_frees_up(bus: Any) -> None:
    if not hasattr(bus, "wait"):
        pytest.skip("not a local-host bus")
    bus.send(Q, [msg("s1", session="S"), msg("s2", session="S")])
    first = receive(bus)
    assert bus.receive(Q) is None
    timer = threading.Timer(0.1, lambda: bus.complete(first))
    timer.start()
    t0 = time.monotonic()
    bus.wait(Q, 5)
    timer.join()
    assert time.monotonic() - t0 < 2
    assert receive(bus).message_id == "s2"


def test_concurrent_waiting_receivers_get_every_message(bus: Any) -> None:
    """The local host's loop: receive, and when empty wait; the senders are other threads."""
    if not hasattr(bus, "wait"):
        pytest.skip("not a local-host bus")
    total = 400
    got: list[str] = []
    guard = threading.Lock()
    stop = threading.Event()

    def host_loop() -> None:
        while not stop.is_set():
            d = bus.receive(Q)
            if d is None:
                bus.wait(Q, 1.0)
                continue
            bus.complete(d)
            with guard:
                got.append(d.message_id)

    hosts = [threading.Thread(target=host_loop) for _ in range(2)]
    for t in hosts:
        t.start()
    for i in range(total):
        bus.send(Q, [msg(f"m{i}", session=f"s{i % 3}" if i % 2 else None)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with guard:
            if len(got) == total:
                break
        time.sleep(0.01)
    stop.set()
    bus.send(Q, [msg("stop")])  # wakes the loops
    for t in hosts:
        t.join(timeout=5)
    assert sorted(m for m in got if m.startswith("m")) == sorted(f"m{i}" for i in range(total))
    assert len(set(got)) == len(got)


@pytest.mark.parametrize("count", [1, 3])
def test_max_delivery_count_is_configurable(bus_factory: BusFactory, count: int) -> None:
    bus = bus_factory(max_delivery_count=count)
    bus.send(Q, [msg("m")])
    for attempt in range(1, count + 1):
        d = receive(bus)
        assert d.delivery_count == attempt
        bus.abandon(d, reason="boom")
    assert bus.receive(Q) is None
    [dead] = bus.dead_letters(Q)
    assert (dead.dead_letter_reason, dead.dead_letter_description) == (
        "MaxDeliveryCountExceeded",
        "boom",
    )


# --------------------------------------------------------------------------------------------
# Send side: what only the Service Bus adapter's translation decides


@send_side
def test_ids_over_the_service_bus_limit_are_stable(bus: Any) -> None:
    long_a, long_b = "a" * (MAX_ID_LEN + 1), "a" * MAX_ID_LEN + "b"
    bus.send(Q, [msg(long_a, b"1", session=long_a), msg(long_b, b"2")])
    bus.send(Q, [msg(long_a, b"again", session=long_a)])
    first, second = receive(bus), receive(bus)
    assert (first.body, second.body) == (b"1", b"2"), "two long ids stay two messages"
    assert first.message_id != second.message_id
    bus.complete(first)
    bus.complete(second)
    assert bus.receive(Q) is None, "a long id sent twice is one message"
    if isinstance(bus, ServiceBusThroughWire):
        for _, amqp in bus.wire:
            assert amqp.properties is not None
            assert len(amqp.properties.message_id) <= MAX_ID_LEN
            assert amqp.properties.group_id is None or len(amqp.properties.group_id) <= MAX_ID_LEN


def test_the_lifecycle_message_on_the_wire(bus_factory: BusFactory, bus_clock: FakeClock) -> None:
    """The follow-up reconcile as Service Bus gets it: the cluster is the session, the id is
    the one duplicate detection keys on, the due time is the scheduled enqueue time."""
    sb = ServiceBusThroughWire(bus_factory())
    c = Cluster(
        cluster_id="0101-000000-abcdefgh", workspace_id="ws", spec=ClusterSpec(spark_version="x")
    )
    due = bus_clock.ms + 1_500
    sb.send(Q, [reconcile_message(c, "r:0101-000000-abcdefgh:etag:7", due)])
    [(queue, amqp)] = sb.wire
    assert queue == Q
    assert amqp.properties is not None
    assert amqp.properties.group_id == b"0101-000000-abcdefgh"
    assert amqp.properties.message_id == b"r:0101-000000-abcdefgh:etag:7"
    assert amqp.message_annotations == {b"x-opt-scheduled-enqueue-time": due}
    assert sb.receive(Q) is None
    bus_clock.advance(1_500)
    d = receive(sb)
    assert (d.session_id, d.scheduled_enqueue_ms) == (c.cluster_id, due)
    assert d.body == reconcile_message(c, "x").body


def test_one_sdk_send_per_session_in_order(bus_factory: BusFactory) -> None:
    """A batch must not mix sessions on a partitioned queue: each session's messages go in one
    `send_messages` call, in the order given; every message reaches the wire once."""
    sb = ServiceBusThroughWire(bus_factory())
    calls: list[list[str]] = []
    real = WireSender.send_messages

    def counting(self: WireSender, message: Any, *, timeout: float | None = None) -> None:
        calls.append([m.message_id for m in message])
        real(self, message, timeout=timeout)

    WireSender.send_messages = counting  # type: ignore[method-assign]
    try:
        sb.send(Q, [msg("a1", session="A"), msg("b1", session="B"), msg("a2", session="A")])
    finally:
        WireSender.send_messages = real  # type: ignore[method-assign]
    assert calls == [["a1", "a2"], ["b1"]]
    assert [a.properties.message_id for _, a in sb.wire if a.properties] == [b"a1", b"a2", b"b1"]
