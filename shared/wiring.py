"""Builds the adapters from settings: the only place that chooses them."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from shared.domain import cluster as dom_cluster
from shared.domain.ratelimit import RateLimiter
from shared.ports import (
    Bus,
    Clock,
    FileStore,
    Provisioner,
    QueueAdmin,
    ReadyReports,
    Store,
    WorkspaceResources,
)
from shared.private_files import private_dir, write_private
from shared.services.admin import Admin
from shared.services.auth import LOCAL_WORKSPACE, OPERATOR_WORKSPACE, Auth, TokenRevoked
from shared.services.clusters import Catalog, ClusterService
from shared.services.deletion import WorkspaceDeletion
from shared.services.documents import ClusterRepo
from shared.services.files import FilesService
from shared.services.jobs import JobService
from shared.services.lifecycle import Lifecycle
from shared.services.pools import PoolService
from shared.services.quotas import QuotaService
from shared.services.tasks import TaskService
from shared.services.throttle import AddressThrottle
from shared.services.utilization import Utilization
from shared.settings import Settings, get_settings

log = logging.getLogger("sparkplane.wiring")


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
    def queue_admin(self) -> QueueAdmin | None:
        """The bus's operator capability, where the chosen adapter has it (embedded)."""
        return self.bus if isinstance(self.bus, QueueAdmin) else None

    @cached_property
    def workspace_resources(self) -> WorkspaceResources | None:
        """The provisioner's per-workspace resources, where the chosen adapter has them (ARM)."""
        p = self.provisioner
        return p if isinstance(p, WorkspaceResources) else None

    @cached_property
    def ready_reports(self) -> ReadyReports | None:
        """Where the driver agents' `ready` reports go, where the provisioner cannot see
        readiness itself (ARM)."""
        p = self.provisioner
        return p if isinstance(p, ReadyReports) else None

    @cached_property
    def auth(self) -> Auth:
        return Auth(self.store, self.clock, max_lifetime_s=self.settings.token_max_lifetime_s)

    @cached_property
    def limiter(self) -> RateLimiter:
        return RateLimiter(self.settings.rate_limit_per_s, self.settings.rate_limit_burst)

    @cached_property
    def throttle(self) -> AddressThrottle:
        s = self.settings
        return AddressThrottle(
            self.store,
            self.clock,
            rate=s.bad_auth_rate_limit_per_s,
            burst=s.bad_auth_rate_limit_burst,
            window_s=s.bad_auth_window_s,
            shared=s.bad_auth_shared,
        )

    @cached_property
    def repo(self) -> ClusterRepo:
        return ClusterRepo(self.store, self.settings)

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.provisioner, dom_cluster.worker_cap(self.settings.provisioner))

    @cached_property
    def quotas(self) -> QuotaService:
        return QuotaService(self.store, self.files, self.settings)

    @cached_property
    def pools(self) -> PoolService:
        return PoolService(
            self.store,
            self.bus,
            self.catalog,
            self.provisioner,
            self.clock,
            self.settings,
            quotas=self.quotas,
        )

    @cached_property
    def clusters(self) -> ClusterService:
        return ClusterService(
            self.store,
            self.bus,
            self.catalog,
            self.clock,
            self.settings,
            pools=self.pools,
            quotas=self.quotas,
        )

    @cached_property
    def admin(self) -> Admin:
        return Admin(
            self.auth,
            self.store,
            self.clusters,
            self.queue_admin,
            self.workspace_resources,
            self.files,
            self.quotas,
            self.deletion,
        )

    @cached_property
    def deletion(self) -> WorkspaceDeletion:
        return WorkspaceDeletion(
            self.store,
            self.bus,
            self.auth,
            self.clusters,
            self.pools,
            self.workspace_resources,
            self.files,
            self.clock,
            self.settings,
        )

    @cached_property
    def utilization(self) -> Utilization:
        return Utilization(
            self.store,
            self.repo,
            self.clusters,
            self.clock,
            self.settings,
            self.provisioner,
            ready_reports=self.ready_reports,
        )

    @cached_property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle(
            self.repo,
            self.bus,
            self.provisioner,
            self.clock,
            self.settings,
            self.auth,
            self.pools,
            deletion=self.deletion,
        )

    @cached_property
    def tasks(self) -> TaskService:
        return TaskService(self.store, self.clock, self.files_service.read_task_file)

    @cached_property
    def files(self) -> FileStore:
        return _files(self.settings)

    @cached_property
    def files_service(self) -> FilesService:
        return FilesService(self.files, self.store, self.clock, quotas=self.quotas)

    @cached_property
    def jobs(self) -> JobService:
        return JobService(
            self.store,
            self.bus,
            self.clusters,
            self.tasks,
            self.clock,
            self.settings,
            quotas=self.quotas,
        )


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


def _provisioner(s: Settings, store: Store) -> Provisioner:
    if s.provisioner == "local":
        from shared.adapters.local_spark import LocalSparkProvisioner
        from shared.domain import spark_auth

        key = s.spark_secret_key
        return LocalSparkProvisioner(
            s.data_dir / "local_spark",
            scratch_quota_bytes=s.local_scratch_mb * 2**20,
            credentials=lambda credential_id: spark_auth.cluster_credentials(key, credential_id),
        )
    if s.provisioner == "arm":
        from shared.adapters.arm.shards import arm_from_settings

        # The worker slots and ready reports are the app's, shared by its instances.
        return arm_from_settings(s, store=store)
    from shared.adapters.records import RecordProvisioner

    return RecordProvisioner(
        s.data_dir / "records.db",
        boot_s=s.record_boot_s,
        stop_s=s.record_stop_s,
        agents_dir=s.data_dir / "record-agents" if s.record_agents else None,
    )


def _files(s: Settings) -> FileStore:
    if s.files == "blob":
        from shared.adapters.blob_files import BlobFileStore

        return BlobFileStore.from_settings(s)
    from shared.adapters.local_files import LocalFileStore

    return LocalFileStore(Path(s.files_dir) if s.files_dir else s.data_dir / "files")


def _with_spark_key(s: Settings) -> Settings:
    """`s` with the key of the clusters' Spark secrets (shared/domain/spark_auth.py): the
    setting's, else (not with the ARM provisioner, whose instances must all share one) the
    one kept in <data_dir>/spark-secret-key, made on first start (mode 0600)."""
    if s.spark_secret_key:
        return s
    if s.provisioner == "arm":
        raise ValueError("SPARKPLANE_SPARK_SECRET_KEY is required with the ARM provisioner")
    path = Path(s.data_dir) / "spark-secret-key"
    key = path.read_text().strip() if path.exists() else ""
    if not key:
        key = secrets.token_hex(32)
        write_private(path, key + "\n")
    return s.model_copy(update={"spark_secret_key": key})


def build(settings: Settings) -> Container:
    private_dir(settings.data_dir)
    settings = _with_spark_key(settings)
    store = _store(settings)
    return Container(
        settings=settings,
        store=store,
        bus=_bus(settings),
        provisioner=_provisioner(settings, store),
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


def _persisted_token(path: Path, issue: Callable[[str | None], str]) -> str:
    """A token kept in a 0600 file and re-registered (by hash) on every start, unless it was
    revoked: then a new one replaces it in the file."""
    token = path.read_text().strip() if path.exists() else ""
    if token:
        try:
            issue(token)
            return token
        except TokenRevoked:
            # Revoked through the API: it stays revoked, and the file gets a new token.
            log.warning(
                "the token in the file was revoked; writing a new one", extra={"file": str(path)}
            )
    token = issue(None)
    write_private(path, token + "\n")
    return token


def bootstrap_local(c: Container) -> str:
    """First start of the local control plane: the local workspace, its token
    (`<data_dir>/token`) and an operator token (`<data_dir>/operator-token`), both mode 0600
    and reused on later starts. Returns the workspace token."""
    c.auth.ensure_workspace(LOCAL_WORKSPACE, "local")
    c.auth.ensure_workspace(OPERATOR_WORKSPACE, "operators")
    data = Path(c.settings.data_dir)
    _persisted_token(
        data / "operator-token",
        lambda t: c.auth.issue_token(
            OPERATOR_WORKSPACE,
            user="operator@local",
            comment="operator",
            token=t,
            role="operator",
        )[0],
    )
    return _persisted_token(
        data / "token",
        lambda t: c.auth.issue_token(LOCAL_WORKSPACE, user="admin@local", comment="local", token=t)[
            0
        ],
    )
