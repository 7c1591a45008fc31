"""The Service Bus adapter at the SDK boundary.

No local broker speaks the Service Bus AMQP dialect, so these tests stop where the SDK takes
over: a fake sender with the SDK sender's methods receives the real
`azure.servicebus.ServiceBusMessage` objects the adapter built, and the tests read back what
the broker would see (session, message id, scheduled enqueue time, body, properties). The
semantics the broker adds (sessions, duplicate detection, scheduling) are stated by the bus
contract suite that the embedded bus passes.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage

from shared.adapters.servicebus import MAX_ID_LEN, ServiceBusSender, to_servicebus_message
from shared.domain.cluster import Cluster, ClusterSpec
from shared.ports import OutMessage
from shared.services.messages import reconcile_message
from shared.settings import Settings


class FakeSender:
    """Stands in for `azure.servicebus.ServiceBusSender` (same method names and arguments)."""

    def __init__(self, queue: str, *, fail: int = 0) -> None:
        self.queue = queue
        self.sent: list[list[ServiceBusMessage]] = []
        self.scheduled: list[tuple[list[ServiceBusMessage], datetime]] = []
        self.closed = False
        self.fail = fail
        self._inside = 0
        self.overlaps = 0

    def send_messages(self, message: Any, *, timeout: float | None = None) -> None:
        assert timeout is not None and timeout > 0
        self._inside += 1
        try:
            if self._inside > 1:
                self.overlaps += 1
            time.sleep(0.001)
            if self.fail:
                self.fail -= 1
                raise ConnectionError("link detached")
            batch = message if isinstance(message, list) else [message]
            assert all(isinstance(m, ServiceBusMessage) for m in batch)
            self.sent.append(batch)
        finally:
            self._inside -= 1

    def schedule_messages(
        self, messages: Any, schedule_time_utc: datetime, *, timeout: float | None = None
    ) -> list[int]:
        self.scheduled.append((list(messages), schedule_time_utc))
        return list(range(len(messages)))

    def close(self) -> None:
        self.closed = True


class Factory:
    def __init__(self, fail_first: int = 0) -> None:
        self.made: list[FakeSender] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def __call__(self, queue: str) -> FakeSender:
        with self.lock:
            s = FakeSender(queue, fail=self.fail_first if not self.made else 0)
            self.made.append(s)
            return s


def body(m: ServiceBusMessage) -> bytes:
    return b"".join(m.body)


def test_a_delayed_reconcile_carries_session_message_id_and_scheduled_time() -> None:
    f = Factory()
    bus = ServiceBusSender(f)
    due = 1_900_000_000_123
    c = Cluster(
        cluster_id="0101-000000-abcd1234",
        workspace_id="ws1",
        spec=ClusterSpec(spark_version="4.1.x-scala2.13"),
    )
    bus.send("cluster-lifecycle", [reconcile_message(c, "r:0101-000000-abcd1234:e1:7", due)])

    [sender] = f.made
    assert sender.queue == "cluster-lifecycle"
    [[m]] = sender.sent
    assert m.session_id == "0101-000000-abcd1234"
    assert m.message_id == "r:0101-000000-abcd1234:e1:7"
    assert m.scheduled_enqueue_time_utc == datetime.fromtimestamp(due / 1000, tz=UTC)
    assert m.scheduled_enqueue_time_utc.tzinfo is not None
    assert body(m) == (
        b'{"type": "reconcile", "cluster_id": "0101-000000-abcd1234", "workspace_id": "ws1"}'
    )
    # Scheduling rides on the message annotation of a plain send; nothing to cancel later.
    assert sender.scheduled == []


def test_an_immediate_message_has_no_scheduled_time_and_keeps_its_properties() -> None:
    f = Factory()
    bus = ServiceBusSender(f)
    bus.send(
        "q",
        [
            OutMessage(
                b"x",
                "m-1",
                session_id="s-1",
                application_properties={"type": "reconcile", "attempt": 3},
            )
        ],
    )
    [[m]] = f.made[0].sent
    assert m.scheduled_enqueue_time_utc is None
    assert m.application_properties == {"type": "reconcile", "attempt": 3}
    assert (m.session_id, m.message_id, body(m)) == ("s-1", "m-1", b"x")


def test_a_message_without_session_is_sent_without_one() -> None:
    m = to_servicebus_message(OutMessage(b"{}", "m"))
    assert m.session_id is None
    assert m.application_properties is None


def test_ids_over_the_service_bus_limit_become_a_stable_digest() -> None:
    long_id = "r:" + "x" * 200
    a = to_servicebus_message(OutMessage(b"", long_id, session_id="s" * 300))
    b = to_servicebus_message(OutMessage(b"", long_id, session_id="s" * 300))
    c = to_servicebus_message(OutMessage(b"", long_id + "y"))
    assert len(a.message_id) <= MAX_ID_LEN and len(a.session_id or "") <= MAX_ID_LEN
    # Duplicate detection still sees the same id for the same logical message.
    assert a.message_id == b.message_id and a.session_id == b.session_id
    assert a.message_id != c.message_id


def test_one_sdk_send_per_session_in_order() -> None:
    f = Factory()
    bus = ServiceBusSender(f)
    bus.send(
        "q",
        [
            OutMessage(b"1", "a1", session_id="A"),
            OutMessage(b"2", "b1", session_id="B"),
            OutMessage(b"3", "a2", session_id="A"),
        ],
    )
    [sender] = f.made
    assert [[m.message_id for m in batch] for batch in sender.sent] == [["a1", "a2"], ["b1"]]
    assert {m.session_id for m in sender.sent[0]} == {"A"}


def test_an_empty_send_opens_nothing() -> None:
    f = Factory()
    ServiceBusSender(f).send("q", [])
    assert f.made == []


def test_one_sender_per_queue_shared_by_threads_and_used_one_at_a_time() -> None:
    f = Factory()
    bus = ServiceBusSender(f)

    def work(i: int) -> None:
        for j in range(10):
            bus.send(f"q{i % 2}", [OutMessage(b"", f"{i}-{j}", session_id=str(i))])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s.queue for s in f.made) == ["q0", "q1"]
    assert sum(len(s.sent) for s in f.made) == 80
    assert all(s.overlaps == 0 for s in f.made)


def test_a_failed_send_raises_and_the_next_send_uses_a_fresh_sender() -> None:
    f = Factory(fail_first=1)
    bus = ServiceBusSender(f)
    with pytest.raises(ConnectionError):
        bus.send("q", [OutMessage(b"", "m1", session_id="s")])
    assert f.made[0].closed
    bus.send("q", [OutMessage(b"", "m1", session_id="s")])
    assert len(f.made) == 2 and [m.message_id for m in f.made[1].sent[0]] == ["m1"]
    bus.close()
    assert f.made[1].closed


CONN = (
    "Endpoint=sb://sparkplane-test.servicebus.windows.net/;SharedAccessKeyName=send;"
    "SharedAccessKey=c2VjcmV0"
)


def test_from_settings_with_a_connection_string_makes_real_queue_senders() -> None:
    bus = ServiceBusSender.from_settings(Settings(servicebus_connection_string=CONN))
    sender = bus._factory("cluster-lifecycle")
    try:
        # A real SDK sender for that queue and namespace; no link is opened until a send.
        from azure.servicebus import ServiceBusSender as SdkSender

        assert isinstance(sender, SdkSender)
        assert sender.entity_name == "cluster-lifecycle"
        assert sender.fully_qualified_namespace == "sparkplane-test.servicebus.windows.net"
    finally:
        sender.close()
        bus.close()


def test_from_settings_with_a_namespace_uses_the_token_credential() -> None:
    class Cred:
        def get_token(self, *scopes: str, **kw: Any) -> Any:
            raise AssertionError("no token is needed before a send")

    s = Settings(servicebus_fqdn="sparkplane-test.servicebus.windows.net")
    bus = ServiceBusSender.from_settings(s, credential=Cred())
    sender = bus._factory("cluster-lifecycle")
    try:
        assert sender.fully_qualified_namespace == "sparkplane-test.servicebus.windows.net"
    finally:
        sender.close()
        bus.close()


def test_from_settings_without_a_namespace_says_what_is_missing() -> None:
    with pytest.raises(ValueError, match="SERVICEBUS_FQDN"):
        ServiceBusSender.from_settings(Settings())
