"""The optional capabilities of the ports (shared/ports.py QueueAdmin, WorkspaceResources):
wiring hands them to the services exactly when the chosen adapter has them, and the operator
API answers accordingly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.adapters.embedded_bus import EmbeddedBus
from shared.adapters.records import RecordProvisioner
from shared.adapters.servicebus import ServiceBusSender
from shared.adapters.sqlite_store import SqliteStore
from shared.errors import NotImplementedApi
from shared.ports import OutMessage
from shared.settings import Settings
from shared.wiring import Container, SystemClock


class NullSender:
    def send_messages(self, message: Any, *, timeout: float | None = None) -> None:
        pass

    def schedule_messages(self, messages: Any, schedule_time_utc: Any, **kw: Any) -> list[int]:
        return []

    def close(self) -> None:
        pass


def container(tmp_path: Path, bus: Any) -> Container:
    return Container(
        settings=Settings(data_dir=tmp_path / "data"),
        store=SqliteStore(tmp_path / "store.db"),
        bus=bus,
        provisioner=RecordProvisioner(tmp_path / "records.db"),
        clock=SystemClock(),
    )


def test_embedded_bus_and_records(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path / "bus.db", max_delivery_count=1)
    c = container(tmp_path, bus)
    assert c.queue_admin is bus
    assert c.workspace_resources is None, "record nodes need no resources per workspace"
    assert c.ready_reports is None, "record nodes need no readiness reports"
    q = c.settings.lifecycle_queue
    bus.send(q, [OutMessage(body=b"{}", message_id="poison")])
    d = bus.receive(q)
    assert d is not None
    bus.abandon(d, reason="boom")
    assert [m["message_id"] for m in c.admin.dead_letters(q)["messages"]] == ["poison"]
    assert {"queue": q, "active": 0, "scheduled": 0, "locked": 0, "dead_lettered": 1} in (
        c.admin.status()["queues"]
    )
    ws = c.admin.create_workspace({"name": "one", "workspace_id": "ws1"})
    assert "provisioning_state" not in c.admin.get_workspace(ws["workspace_id"])


def test_service_bus_has_no_queue_admin(tmp_path: Path) -> None:
    c = container(tmp_path, ServiceBusSender(lambda q: NullSender()))
    assert c.queue_admin is None
    assert "queues" not in c.admin.status()
    with pytest.raises(NotImplementedApi):
        c.admin.dead_letters(c.settings.lifecycle_queue)
