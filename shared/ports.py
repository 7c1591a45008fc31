"""The ports: what the domain and the services need from the outside world.

Each port has one contract test suite under tests/contract/ that every adapter passes.
Adapters translate; they hold no decisions.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

# The value types the domain rules decide on live with the domain; the ports speak in them.
from shared.domain.files import FileInfo as FileInfo
from shared.domain.nodes import Node as Node
from shared.domain.nodes import NodeStatus as NodeStatus
from shared.domain.nodes import NodeType as NodeType
from shared.domain.nodes import PoolNode as PoolNode
from shared.domain.nodes import PoolNodeStatus as PoolNodeStatus
from shared.domain.nodes import SparkVersion as SparkVersion

# --------------------------------------------------------------------------------------------
# Store: documents with optimistic concurrency (Cosmos DB semantics), plus cluster events.


class StoreError(Exception):
    """Base class of store failures the callers handle."""


class AlreadyExists(StoreError):
    """create() of a document whose (kind, pk, id) exists."""


class PreconditionFailed(StoreError):
    """replace()/delete() with a stale ETag: somebody wrote in between; re-read and retry."""


class NotFound(StoreError):
    """replace()/delete() of a document that does not exist."""


@dataclass(frozen=True, slots=True)
class Record:
    """One stored document. `etag` changes on every write."""

    kind: str
    pk: str
    id: str
    body: dict[str, Any]
    etag: str


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Record]
    next_token: str | None


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Filters of `clusters/events` (times in epoch ms)."""

    start_time: int | None = None
    end_time: int | None = None
    types: Sequence[str] = ()
    order: Literal["ASC", "DESC"] = "DESC"
    offset: int = 0
    limit: int = 50


class Store(Protocol):
    """Documents grouped by kind ("cluster", "workspace", "token", ...) and partition key.

    Point reads by (kind, pk, id); `list` pages one partition ordered by id; `scan` is the
    cross-partition query the timers use. Documents and events may carry a time to live.
    """

    def get(self, kind: str, pk: str, id: str) -> Record | None: ...

    def create(
        self, kind: str, pk: str, id: str, body: Mapping[str, Any], *, ttl_s: int | None = None
    ) -> Record: ...

    def replace(
        self, kind: str, pk: str, id: str, body: Mapping[str, Any], *, etag: str
    ) -> Record: ...

    def delete(self, kind: str, pk: str, id: str, *, etag: str | None = None) -> None: ...

    def list(self, kind: str, pk: str, *, page_size: int, page_token: str | None) -> Page: ...

    def scan(self, kind: str, *, field: str, values: Sequence[str]) -> Iterator[Record]: ...

    def append_events(
        self, cluster_id: str, events: Sequence[Mapping[str, Any]], *, ttl_s: int
    ) -> None:
        """Append events (each has "timestamp" ms and "type"); an event with an "id" already
        stored for the cluster is skipped, so re-appending after a crash is safe."""
        ...

    def events(
        self, cluster_id: str, query: EventQuery
    ) -> tuple[builtins.list[dict[str, Any]], int]: ...

    def delete_events(self, cluster_id: str) -> None: ...

    def purge_expired(self) -> int: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Bus: what the app sends (Service Bus semantics). Receiving is the Functions host's job; the
# embedded bus also implements `Receiver` for devhost, and `QueueAdmin` for the operator API.


@dataclass(frozen=True, slots=True)
class OutMessage:
    body: bytes
    message_id: str
    session_id: str | None = None
    scheduled_enqueue_ms: int | None = None
    application_properties: Mapping[str, str | int] = field(default_factory=dict)


class Bus(Protocol):
    def send(self, queue: str, messages: Sequence[OutMessage]) -> None: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message locked for one receiver (peek-lock)."""

    queue: str
    sequence_number: int
    message_id: str
    session_id: str | None
    body: bytes
    delivery_count: int
    enqueued_ms: int
    scheduled_enqueue_ms: int | None
    lock_token: str
    locked_until_ms: int
    application_properties: Mapping[str, str | int]
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None


class LockLost(Exception):
    """complete/abandon/renew with a lock that expired or was taken by another receiver."""


class Receiver(Protocol):
    def receive(self, queue: str) -> Delivery | None: ...

    def complete(self, d: Delivery) -> None: ...

    def abandon(self, d: Delivery, *, reason: str | None = None) -> None: ...

    def dead_letter(self, d: Delivery, *, reason: str, description: str = "") -> None: ...

    def renew_lock(self, d: Delivery) -> Delivery: ...


@runtime_checkable
class QueueAdmin(Protocol):
    """An optional capability of a bus: what the operator API reads and repairs of a queue.
    The embedded bus has it; in Azure the portal and the Service Bus tools do this, so the
    Service Bus adapter has not. shared/wiring.py hands it to the services (or None)."""

    def counts(self, queue: str) -> dict[str, int]:
        """active, scheduled, locked and dead_lettered messages of the queue."""
        ...

    def dead_letters(self, queue: str) -> list[Delivery]: ...

    def resubmit_dead_letter(self, queue: str, sequence_number: int) -> bool: ...

    def purge_dead_letters(self, queue: str, sequence_number: int | None = None) -> int: ...


# --------------------------------------------------------------------------------------------
# Provisioner: makes and removes the nodes of a cluster. Every call returns quickly: slow work
# is started and then observed by later reconciles. A node's id is known when the call that
# starts it returns and is the node's for its life (observe reports it, remove_workers and
# grow_storage take it); `Node.instance_id` is the cloud's own name for it where that differs.
# A node is RUNNING when its Spark role is ready (a query runs on the driver; a worker has an
# executor registered), not merely when its machine runs.


class PoolCapacityReached(Exception):
    """An instance pool has too few idle nodes and no room under its max_capacity to start
    the rest: nothing was taken."""


class SubscriptionCapacityReached(Exception):
    """The cloud subscription(s) a cluster or workspace would go to hold as many clusters as
    the operator allows (ARM: `SPARKPLANE_ARM_SUBSCRIPTION_MAX_CLUSTERS`): nothing was made.
    A permanent failure of that start (the cluster ends TERMINATED with
    AZURE_QUOTA_EXCEEDED_EXCEPTION), not a retry; the message says why (shown to users)."""


class ProvisionerUnsupported(Exception):
    """This provisioner cannot do what was asked; the message says why (shown to users)."""


class ProvisionerThrottled(Exception):
    """A temporary failure: the cloud's request limits (or the provisioner's own budget of
    them) allow no more requests for now. Nothing is lost: the caller retries the same work
    after `retry_after_s` seconds; it never fails a cluster for it."""

    def __init__(self, retry_after_s: float, message: str = "") -> None:
        super().__init__(message or f"throttled; retry after {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class PoolRequest:
    """What a provisioner needs to know of an instance pool to make its nodes."""

    pool_id: str
    workspace_id: str
    node_type_id: str
    spark_version: str
    # Idle plus used nodes never exceed it (None: no limit).
    max_capacity: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeRequest:
    """What a provisioner needs to know of a cluster to make its nodes."""

    cluster_id: str
    workspace_id: str
    node_type_id: str
    driver_node_type_id: str
    spark_version: str
    spark_conf: Mapping[str, str] = field(default_factory=dict)
    spark_env_vars: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    # Environment of the cluster agent (control-plane URL, cluster id, the cluster's own agent
    # token). start_driver: the agent on the driver node; add_workers: when set, a node agent
    # on each worker too (it reports the node's local disk; clusters with elastic disk).
    agent_env: Mapping[str, str] = field(default_factory=dict)
    # Files for the Spark configuration directory of every node (name -> content), e.g. the
    # fair scheduler's fairscheduler.xml.
    conf_files: Mapping[str, str] = field(default_factory=dict)
    # Instance pools the workers and the driver come from (None: fresh nodes).
    pool: PoolRequest | None = None
    driver_pool: PoolRequest | None = None
    # The workers the cluster wants (start_driver: a hot pool driver's Workers beyond these
    # are let go at once).
    num_workers: int = 0
    # The cluster's Spark authentication secret and Spark Connect token
    # (shared/domain/spark_auth.py); empty: the cluster's endpoints ask for none.
    spark_auth_secret: str = field(default="", repr=False)
    connect_token: str = field(default="", repr=False)


class Provisioner(Protocol):
    def node_types(self) -> list[NodeType]: ...

    def spark_versions(self) -> list[SparkVersion]: ...

    def observe(self, cluster_id: str) -> list[Node]:
        """The nodes that exist for the cluster now, driver first. A node reports its local
        disk (attrs["disk_total_bytes"]) once it runs; while it starts it may not yet."""
        ...

    def start_driver(self, req: NodeRequest) -> Node: ...

    def add_workers(self, req: NodeRequest, count: int) -> list[Node]:
        """Start `count` workers; until the driver's resources exist it may start none (the
        caller, planning from observe(), asks again)."""
        ...

    def remove_workers(self, cluster_id: str, node_ids: Sequence[str]) -> None:
        """Start a graceful removal (decommission); the nodes disappear from observe() later."""
        ...

    def stop_cluster(self, cluster_id: str) -> None:
        """Start stopping every node of the cluster; observe() is empty when it is done."""
        ...

    def cluster_ids(self) -> set[str]:
        """Every cluster that owns a node (to find orphans)."""
        ...

    # Local storage. A node's local disk (the Spark scratch space) is grown on demand.

    def grow_storage(self, cluster_id: str, node_id: str, total_bytes: int) -> None:
        """Make the node's local disk at least `total_bytes` (idempotent; returns quickly)."""
        ...

    # Instance pools. start_driver/add_workers with `req.driver_pool`/`req.pool` take idle
    # nodes of the pool first, then start new pool nodes while under its max_capacity, and
    # raise PoolCapacityReached (taking nothing) when the whole request does not fit.
    # remove_workers/stop_cluster give pool nodes back: they are RETURNING, then idle again.
    # A provisioner without pools raises ProvisionerUnsupported from add_idle and from
    # start_driver/add_workers given a pool; its pool_nodes and pool_ids are empty.

    def pool_nodes(self, pool_id: str) -> list[PoolNode]: ...

    def add_idle(self, req: PoolRequest, count: int) -> list[PoolNode]:
        """Start up to `count` warm idle nodes (fewer if max_capacity leaves less room)."""
        ...

    def remove_idle(self, pool_id: str, node_ids: Sequence[str]) -> None:
        """Terminate these nodes if they are still idle (a node taken meanwhile stays)."""
        ...

    def pool_ids(self) -> set[str]:
        """Every pool that owns a node (to find orphans)."""
        ...


@runtime_checkable
class WorkspaceResources(Protocol):
    """An optional capability of a provisioner: resources of their own per workspace (ARM: a
    resource group with the workspace's network). Provisioners whose nodes need none (records,
    local Spark) have not. shared/wiring.py hands it to the services (or None)."""

    def create_workspace(self, workspace_id: str, region: str | None = None) -> None:
        """Start making the workspace's resources (returns quickly)."""
        ...

    def workspace_status(self, workspace_id: str) -> str:
        """PROVISIONING, READY, FAILED, DELETING or NOT_FOUND."""
        ...

    def delete_workspace(self, workspace_id: str) -> None:
        """Start removing the workspace's resources (idempotent)."""
        ...


@runtime_checkable
class ClusterHealthQuery(Protocol):
    """An optional capability of a provisioner: the clusters with a node down in the cloud, in
    one bulk query (paged) for all of them, instead of an observe per cluster (ARM: Azure
    Resource Graph). The reconciler timer observes only those (shared/services/health.py)."""

    def unhealthy_clusters(self) -> set[str]:
        """Ids of the clusters some of whose nodes failed or are stopped; may raise
        ProvisionerThrottled."""
        ...

    def read_reason(self, cluster_id: str, reason: str) -> None:
        """The cluster is about to be observed by the reconciler timer, and why
        (shared/domain/node_health.py's reasons): reads that confirm a suspect node go before
        drift reads when the cloud's request budget is short."""
        ...


@runtime_checkable
class ReadyReports(Protocol):
    """An optional capability of a provisioner that cannot see its nodes' readiness itself
    (ARM: a VM that runs is not yet a Spark driver that answers). The driver's agent reports
    `ready` (Spark Connect answered a query; again as executors register) to the control
    plane, which hands the report on here; observe() reports the driver RUNNING only after
    one. Provisioners that see readiness themselves (local Spark reads the node's ready file)
    have not. shared/wiring.py hands it to the services (or None)."""

    def ready_reported(self, cluster_id: str, node_id: str, executors: int, at_ms: int) -> None:
        """Keep the driver agent's report (`executors` registered, at `at_ms`); quick, no
        cloud request."""
        ...


# --------------------------------------------------------------------------------------------
# FileStore: each workspace's files (its DBFS root and its workspace files). Paths are what
# shared/domain/paths.py makes: absolute, normalised POSIX paths ("/dbfs/a/b.py"), never "..",
# ".", "//", a trailing "/" or NUL; an adapter refuses any other path with ValueError. The root
# "/" of a workspace always exists. Nothing is ever visible half-written: `write` and
# `commit_upload` publish a whole file at once.


class FileStoreError(Exception):
    """Base class of file-store failures the callers handle."""


class FileMissing(FileStoreError):
    """The path (or, for write/move/commit_upload, a file standing where a parent directory
    should be; for commit_upload, a staged block) does not exist."""


class FileExists(FileStoreError):
    """The target exists: a file where overwrite was not asked for, a directory where a file
    should go, a file where a directory should go (mkdirs through a file, as Databricks'
    RESOURCE_ALREADY_EXISTS), or a move onto an existing path."""


class DirectoryNotEmpty(FileStoreError):
    """A non-recursive delete of a directory that has entries."""


class FileStore(Protocol):
    def write(self, workspace_id: str, path: str, data: bytes, *, overwrite: bool) -> FileInfo:
        """Write a whole file, making its parent directories."""
        ...

    def read(self, workspace_id: str, path: str, offset: int = 0, length: int = -1) -> bytes:
        """Bytes of a file from `offset` (at most `length`; -1: to the end). A directory is
        FileExists; a missing file FileMissing."""
        ...

    def stat(self, workspace_id: str, path: str) -> FileInfo: ...

    def list(self, workspace_id: str, path: str) -> list[FileInfo]:
        """A directory's entries sorted by path (a file: the file itself)."""
        ...

    def mkdirs(self, workspace_id: str, path: str) -> None:
        """Make the directory and its parents (an existing directory is fine)."""
        ...

    def delete(self, workspace_id: str, path: str, *, recursive: bool) -> None: ...

    def move(self, workspace_id: str, src: str, dst: str) -> None:
        """Rename a file or directory; `dst` must not exist (its parents are made)."""
        ...

    # Streaming uploads (DBFS create/add-block/close): blocks are staged under an upload id
    # and published as one file by commit_upload; until then nothing is visible at `path`.

    def stage_block(self, workspace_id: str, upload_id: str, index: int, data: bytes) -> None: ...

    def commit_upload(
        self, workspace_id: str, upload_id: str, path: str, blocks: int, *, overwrite: bool
    ) -> FileInfo:
        """Publish blocks 0..blocks-1 of the upload as the file at `path` and drop them."""
        ...

    def discard_upload(self, workspace_id: str, upload_id: str) -> None:
        """Drop an upload's staged blocks (an unknown upload is fine)."""
        ...

    def delete_workspace(self, workspace_id: str) -> None:
        """Remove every file, directory and staged block of the workspace."""
        ...


class Clock(Protocol):
    def now_ms(self) -> int: ...
