"""The Service Bus adapter of the `Bus` port (sending; receiving is the Functions host's job).

What it maps, message by message (`OutMessage` -> `azure.servicebus.ServiceBusMessage`):

- `session_id`: the queue is session-enabled; the session is the cluster id, so the host runs
  one handler per cluster at a time and keeps that cluster's messages in order.
- `message_id`: what the queue's duplicate detection keys on. Service Bus caps both ids at 128
  characters; a longer id is replaced by a stable digest, so two sends of the same long id
  still collapse into one.
- `scheduled_enqueue_ms` -> `scheduled_enqueue_time_utc` (the `x-opt-scheduled-enqueue-time`
  annotation): the broker keeps the message invisible until then. The SDK honours it on a plain
  `send_messages` (sessions and duplicate detection included), so delayed and immediate
  messages share one send path. `schedule_messages` is the other way; it only adds sequence
  numbers for `cancel_scheduled_messages`, and nothing here cancels a reconcile (a stale one is
  a harmless extra evaluation).
- `application_properties` as they are.

One `ServiceBusClient` per namespace and one `ServiceBusSender` per queue, made on first use
and kept. The SDK's senders are not thread-safe, and the Functions Python worker runs
synchronous functions on a thread pool, so each sender is used under its own lock. A send that
fails drops its sender (the next send opens a fresh link) and raises: the caller's message is
then abandoned and redelivered by the host, which is the retry.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

from azure.servicebus import ServiceBusMessage

from shared.ports import OutMessage

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger("sparkplane.servicebus")

# Service Bus limits on MessageId and SessionId.
MAX_ID_LEN = 128


class SenderLike(Protocol):
    """The part of `azure.servicebus.ServiceBusSender` this adapter uses."""

    def send_messages(self, message: Any, *, timeout: float | None = None) -> None: ...

    def schedule_messages(
        self, messages: Any, schedule_time_utc: datetime, *, timeout: float | None = None
    ) -> list[int]: ...

    def close(self) -> None: ...


def _bounded_id(value: str) -> str:
    if len(value) <= MAX_ID_LEN:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def to_servicebus_message(m: OutMessage) -> ServiceBusMessage:
    """The SDK message for one `OutMessage` (a pure translation; tested on its own)."""
    scheduled = None
    if m.scheduled_enqueue_ms is not None:
        scheduled = datetime.fromtimestamp(m.scheduled_enqueue_ms / 1000, tz=UTC)
    return ServiceBusMessage(
        bytes(m.body),
        message_id=_bounded_id(m.message_id),
        session_id=_bounded_id(m.session_id) if m.session_id is not None else None,
        scheduled_enqueue_time_utc=scheduled,
        application_properties=cast(
            "dict[str | bytes, Any]", dict(m.application_properties) or None
        ),
    )


class _Slot:
    __slots__ = ("lock", "sender")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sender: SenderLike | None = None


class ServiceBusSender:
    """`Bus.send` on Azure Service Bus.

    `sender_factory(queue)` makes the SDK sender of a queue; `from_settings` wires it to a real
    `ServiceBusClient`, tests pass a fake with the same `send_messages` method.
    """

    def __init__(
        self,
        sender_factory: Callable[[str], SenderLike],
        *,
        timeout_s: float = 30.0,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._factory = sender_factory
        self._timeout_s = timeout_s
        self._on_close = on_close
        self._slots: dict[str, _Slot] = {}
        self._slots_lock = threading.Lock()

    @classmethod
    def from_settings(cls, s: Settings, *, credential: Any = None) -> ServiceBusSender:
        """A connection string (a local emulator, a quick test) wins; otherwise the namespace
        FQDN with the app's managed identity (`DefaultAzureCredential`), no keys."""
        from azure.servicebus import ServiceBusClient

        if s.servicebus_connection_string:
            client = ServiceBusClient.from_connection_string(s.servicebus_connection_string)
        elif s.servicebus_fqdn:
            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            client = ServiceBusClient(s.servicebus_fqdn, credential)
        else:
            raise ValueError(
                "bus=servicebus needs SPARKPLANE_SERVICEBUS_FQDN (managed identity) or "
                "SPARKPLANE_SERVICEBUS_CONNECTION_STRING"
            )

        def factory(queue: str) -> SenderLike:
            return client.get_queue_sender(queue_name=queue)

        return cls(factory, on_close=client.close)

    def _slot(self, queue: str) -> _Slot:
        with self._slots_lock:
            slot = self._slots.get(queue)
            if slot is None:
                slot = self._slots[queue] = _Slot()
            return slot

    def send(self, queue: str, messages: Sequence[OutMessage]) -> None:
        if not messages:
            return
        # One SDK send per session: a batch must not mix sessions on a partitioned queue, and
        # Lifecycle sends one message at a time anyway. Order within a session is kept.
        groups: dict[str | None, list[ServiceBusMessage]] = {}
        for m in messages:
            groups.setdefault(m.session_id, []).append(to_servicebus_message(m))
        slot = self._slot(queue)
        with slot.lock:
            for batch in groups.values():
                if slot.sender is None:
                    slot.sender = self._factory(queue)
                try:
                    slot.sender.send_messages(batch, timeout=self._timeout_s)
                except Exception:
                    log.warning("service bus send failed; dropping the sender", exc_info=True)
                    self._drop(slot)
                    raise

    @staticmethod
    def _drop(slot: _Slot) -> None:
        sender, slot.sender = slot.sender, None
        if sender is not None:
            try:
                sender.close()
            except Exception:
                log.debug("closing a failed sender", exc_info=True)

    def close(self) -> None:
        with self._slots_lock:
            slots = list(self._slots.values())
            self._slots.clear()
        for slot in slots:
            with slot.lock:
                self._drop(slot)
        if self._on_close is not None:
            self._on_close()
