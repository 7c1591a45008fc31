"""Builds the adapters from settings: the only place that chooses them."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from shared.ports import Bus, Clock, Provisioner, Store
from shared.services.auth import LOCAL_WORKSPACE, Auth
from shared.services.clusters import Catalog, ClusterRepo, ClusterService
from shared.services.lifecycle import Lifecycle
from shared.settings import Settings, get_settings


class SystemClock:
    def now_ms(self) -> int:
        return int(time.time() * 1000)


@dataclass
class Container:
    settings: Settings
    store: Store
    bus: Bus
    provisioner: Provisioner
    clock: Clock

    @cached_property
    def auth(self) -> Auth:
        return Auth(self.store, self.clock)

    @cached_property
    def repo(self) -> ClusterRepo:
        return ClusterRepo(self.store, self.settings)

    @cached_property
    def clusters(self) -> ClusterService:
        return ClusterService(
            self.store, self.bus, Catalog(self.provisioner), self.clock, self.settings
        )

    @cached_property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle(self.repo, self.bus, self.provisioner, self.clock, self.settings)


def _store(s: Settings) -> Store:
    if s.store == "cosmos":
        from shared.adapters.cosmos_store import CosmosStore

        return CosmosStore.from_settings(s)
    from shared.adapters.sqlite_store import SqliteStore

    return SqliteStore(s.data_dir / "store.db")


def _bus(s: Settings) -> Bus:
    if s.bus == "servicebus":
        from shared.adapters.servicebus import ServiceBusSender

        return ServiceBusSender.from_settings(s)
    from shared.adapters.embedded_bus import EmbeddedBus

    return EmbeddedBus(
        s.data_dir / "bus.db",
        lock_s=s.bus_lock_s,
        max_delivery_count=s.bus_max_delivery_count,
        duplicate_window_s=s.bus_duplicate_window_s,
    )


def _provisioner(s: Settings) -> Provisioner:
    if s.provisioner == "local":
        from shared.adapters.local_spark import LocalSparkProvisioner

        return LocalSparkProvisioner(s.data_dir)
    if s.provisioner == "arm":
        from shared.adapters.arm import ArmProvisioner

        return ArmProvisioner.from_settings(s)
    from shared.adapters.records import RecordProvisioner

    return RecordProvisioner(s.data_dir / "records.db", boot_s=s.record_boot_s)


def build(settings: Settings) -> Container:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Container(
        settings=settings,
        store=_store(settings),
        bus=_bus(settings),
        provisioner=_provisioner(settings),
        clock=SystemClock(),
    )


_lock = threading.Lock()
_container: Container | None = None


def container() -> Container:
    """The process-wide container the functions use (built on first use)."""
    global _container
    if _container is None:
        with _lock:
            if _container is None:
                _container = build(get_settings())
    return _container


def bootstrap_local(c: Container) -> str:
    """First start of the local control plane: the local workspace and its token.

    The token is kept in `<data_dir>/token` (mode 0600) and reused on later starts.
    """
    c.auth.ensure_workspace(LOCAL_WORKSPACE, "local")
    path = Path(c.settings.data_dir) / "token"
    token = path.read_text().strip() if path.exists() else ""
    if not token:
        token, _ = c.auth.issue_token(LOCAL_WORKSPACE, user="admin@local", comment="local")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    else:
        c.auth.issue_token(LOCAL_WORKSPACE, user="admin@local", comment="local", token=token)
    os.chmod(path, 0o600)
    return token
