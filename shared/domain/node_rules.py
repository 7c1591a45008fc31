"""The decisions of the local Spark provisioner: pure functions of what it knows about its nodes.

No I/O, no clock reads: the adapter (shared/adapters/local_spark/) passes the node records'
facts and the time, and carries out the answer.

1. Node types: the catalog of local node types, and the lookup that names the known ones when
   an id is unknown.
2. Ports and memory per role: a driver node runs a standalone Master (RPC and web UI ports) and
   the Spark Connect server (gRPC and application UI ports); a worker node one Worker (RPC and
   web UI); a pool node can become either, so it holds both sets. The Master and Worker daemons
   get a small heap (`DAEMON_MEMORY`); the driver `DRIVER_MEMORY` unless the cluster's
   spark_conf sets spark.driver.memory. A worker offers its node type's cores (at least one)
   and memory.
3. Which pool nodes a cluster takes (`take_from_pool`): idle nodes that are ready first (their
   warm master answers), then the longest idle; when too few are idle, new pool nodes are
   started while the pool is under max_capacity. All or nothing: a request that does not fit
   takes nothing. Nodes being removed from the pool do not count toward max_capacity.
   Hot Workers: an idle node runs either a master of its own (a hot driver) or a Worker
   registered with an idle master of its pool (`hot_worker_master` says which, when it
   becomes idle). A driver is taken among the masters first; a cluster's workers among the
   Workers registered with its driver first. A driver's Workers beyond what its cluster keeps
   (`hot_workers_kept`) are restarted at once, and an idle Worker whose master is no longer an
   idle node of its pool (`hot_worker_stray`) too: a master never offers its cluster a Worker
   the cluster did not take.
4. Status of a node that should be running (`active_status`): LOST once a process of it is
   gone, RUNNING once it was seen ready, STARTING before. RUNNING means ready to run a query,
   not merely started (`node_ready`): a driver is ready when its master is ALIVE and its Spark
   Connect server has answered a query (the node agent's report, shared/agent.py); a worker
   when it is ALIVE at the master and an executor of the cluster's application on it has
   registered with the driver. Two bounds keep a start from hanging: a driver without that
   report `ready_timeout_s` after it started is failed (`ready_overdue`: the agent cannot
   report, the cluster fails with that reason instead of starting forever); a worker ALIVE at
   the master that got no executor within `executor_wait_s` (spark_conf that caps the
   application's cores, e.g. spark.cores.max) counts as ready.
5. Graceful removal (`decommission_done`): a decommissioning worker is stopped once the master
   took note and no executor is left on it, or after the decommission timeout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from shared.domain.nodes import NodeType

# ---------------------------------------------------------------------------- node types

NODE_TYPES: tuple[NodeType, ...] = (
    NodeType("local-small", 1, 1024, "Local worker: 1 core, 1 GiB executor memory"),
    NodeType("local-medium", 2, 2048, "Local worker: 2 cores, 2 GiB executor memory"),
    NodeType("local-large", 4, 4096, "Local worker: 4 cores, 4 GiB executor memory"),
    NodeType(
        "local-memory",
        2,
        4096,
        "Local worker: 2 cores, 4 GiB executor memory",
        category="Memory Optimized",
    ),
)


def node_type(node_type_id: str, catalog: Sequence[NodeType] = NODE_TYPES) -> NodeType:
    """The node type of that id; ValueError naming the known ones otherwise."""
    for nt in catalog:
        if nt.node_type_id == node_type_id:
            return nt
    known = ", ".join(nt.node_type_id for nt in catalog)
    raise ValueError(f"unknown node type {node_type_id!r} (known: {known})")


# ---------------------------------------------------------------------------- ports and memory

Role = Literal["driver", "worker", "pool"]

PORTS_DRIVER = ("master", "master_ui", "connect", "app_ui")
PORTS_WORKER = ("worker", "worker_ui")
# A pool node can become either.
PORTS_POOL = PORTS_DRIVER + PORTS_WORKER

DAEMON_MEMORY = "256m"  # heap of the Master and Worker daemons (and the agent's launcher)
DRIVER_MEMORY = "512m"  # heap of the Spark Connect server (the driver), unless spark_conf says


def ports_for(role: Role) -> tuple[str, ...]:
    """The ports a new node of that role is allocated."""
    return {"driver": PORTS_DRIVER, "worker": PORTS_WORKER, "pool": PORTS_POOL}[role]


def driver_memory(user_conf: Mapping[str, str]) -> str:
    return user_conf.get("spark.driver.memory", DRIVER_MEMORY)


def worker_cores(nt: NodeType) -> int:
    """The cores a Worker of that node type offers (at least one)."""
    return max(1, round(nt.num_cores))


def expected_procs(role: str) -> int:
    """Processes that make the node (a driver: master and Connect server; a worker: its
    Worker; an idle pool node: its warm master or its hot Worker). The agent does not count:
    a dead agent only means no heartbeats."""
    return 2 if role == "driver" else 1


# ---------------------------------------------------------------------------- pools


def keeps_hot_connect(
    *,
    user_conf: Mapping[str, str],
    spark_env_vars: Mapping[str, str],
    conf_files: Mapping[str, str],
    driver_type_id: str,
    worker_type_id: str,
    pool_type_id: str,
) -> bool:
    """Whether the Spark Connect server a hot pool driver started while idle (with the pool's
    defaults: no spark_conf, environment or configuration files of a cluster, the pool's node
    type for the driver and the executors) serves the cluster that takes it as it is. Spark
    reads those once at start: anything else needs a server of the cluster's own."""
    return (
        not user_conf
        and not spark_env_vars
        and not conf_files
        and driver_type_id == worker_type_id == pool_type_id
    )


@dataclass(frozen=True, slots=True)
class IdleNode:
    """An idle pool node as `take_from_pool` sees it."""

    node_id: str
    ready: bool  # its warm master answers (a hot Worker: its Worker runs)
    idle_since_ms: int
    # The idle master its hot Worker is registered with; "": it runs a master of its own.
    hot_master: str = ""


@dataclass(frozen=True, slots=True)
class Take:
    """Idle nodes to take (in order), how many new pool nodes to start, or why nothing fits."""

    taken: tuple[str, ...] = ()
    fresh: int = 0
    refused: str = ""


def take_from_pool(
    pool_id: str,
    idle: Sequence[IdleNode],
    count: int,
    *,
    max_capacity: int | None,
    pool_size: int,
    role: Literal["driver", "worker"] = "worker",
    driver_node: str = "",
) -> Take:
    """Which nodes of a pool a cluster gets for `count` nodes (rule 3). `pool_size` counts the
    pool's nodes that are not being removed. A driver prefers nodes that run a master; workers
    prefer the hot Workers registered with `driver_node` (the cluster's driver)."""

    def first(n: IdleNode) -> bool:
        if role == "driver":
            return not n.hot_master
        return bool(driver_node) and n.hot_master == driver_node

    order = sorted(idle, key=lambda n: (not first(n), not n.ready, n.idle_since_ms, n.node_id))
    taken = tuple(n.node_id for n in order[:count])
    missing = count - len(taken)
    if missing and max_capacity is not None:
        room = max_capacity - pool_size
        if missing > room:
            return Take(
                refused=f"Instance pool {pool_id} is at its max_capacity ({max_capacity}): "
                f"{len(idle)} idle node(s) and room for {max(0, room)} more, {count} needed."
            )
    return Take(taken=taken, fresh=missing)


HOT_WORKERS_PER_MASTER = 1  # hot Workers an idle master gets (a driver and one worker)
HOT_WORKER_RESERVE_S = 10.0  # a taken driver's kept Workers wait that long for its cluster


@dataclass(frozen=True, slots=True)
class IdleMaster:
    """An idle pool node that runs its master, with the hot Workers registered with it."""

    node_id: str
    workers: int
    idle_since_ms: int


def hot_worker_master(
    masters: Sequence[IdleMaster], per_master: int = HOT_WORKERS_PER_MASTER
) -> str:
    """What a node becoming idle runs (rule 3): a Worker registered with the returned master
    (the one with the fewest hot Workers, below `per_master`, then the longest idle), or ""
    when every idle master has its Workers: a master of its own (a hot driver)."""
    open_ = [m for m in masters if m.workers < per_master]
    if not open_:
        return ""
    return min(open_, key=lambda m: (m.workers, m.idle_since_ms, m.node_id)).node_id


def hot_workers_kept(
    attached: Sequence[str], *, wanted: int, settings_fit: bool, same_pool: bool
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The hot Workers registered with a driver a cluster takes: (kept for its workers,
    restarted at once). Kept: at most `wanted` (the cluster's workers), and none when the
    cluster's settings are not the pool's defaults (`settings_fit`: as `keeps_hot_connect`,
    a Worker reads them once at start) or its workers come from another pool."""
    ordered = tuple(sorted(attached))
    n = max(0, wanted) if settings_fit and same_pool else 0
    return ordered[:n], ordered[n:]


def hot_worker_stray(
    *,
    alive: bool = True,
    master_phase: str | None,
    master_alive: bool,
    master_taken_for_s: float,
) -> bool:
    """An idle hot Worker is restarted when its master is not an idle, running node of its
    pool any more (gone, lost, being removed, or taken by a cluster more than
    `HOT_WORKER_RESERVE_S` ago without it). A Worker that is itself lost (`alive` False) is
    not: the node is LOST, and the pool replaces it."""
    if not alive:
        return False
    if master_phase == "idle":
        return not master_alive
    if master_phase == "active" and master_alive:
        return master_taken_for_s >= HOT_WORKER_RESERVE_S
    return True


def idle_to_add(count: int, *, max_capacity: int | None, pool_size: int) -> int:
    """How many of `count` requested idle nodes fit in the pool."""
    room = count if max_capacity is None else max_capacity - pool_size
    return max(0, min(count, room))


def ending_phase(pool_id: str | None) -> str:
    """The phase of a node whose processes are being stopped for good or for its pool."""
    return "returning" if pool_id else "terminating"


# ---------------------------------------------------------------------------- status

ActiveStatus = Literal["STARTING", "RUNNING", "LOST"]


def active_status(*, alive: bool, was_ready: bool, ready_now: bool) -> ActiveStatus:
    """The status of a node that should be running (rule 4)."""
    if not alive:
        return "LOST"
    if was_ready or ready_now:
        return "RUNNING"
    return "STARTING"


READY_TIMEOUT_S = 180.0
EXECUTOR_WAIT_S = 60.0


def node_ready(
    role: str,
    *,
    master_alive: bool,
    connect_answered: bool = False,
    worker_state: str | None = None,
    executor_registered: bool = False,
    starting_for_s: float = 0.0,
    executor_wait_s: float = EXECUTOR_WAIT_S,
) -> bool:
    """Whether a starting node's Spark role is usable (rule 4)."""
    if role == "driver":
        return master_alive and connect_answered
    if worker_state != "ALIVE":
        return False
    return executor_registered or starting_for_s >= executor_wait_s


def ready_overdue(role: str, *, starting_for_s: float, ready_timeout_s: float) -> bool:
    """A driver still not ready `ready_timeout_s` after it started is failed (rule 4)."""
    return role == "driver" and starting_for_s >= ready_timeout_s


def decommission_done(
    *,
    acknowledged: bool,
    has_executors: bool,
    elapsed_s: float,
    timeout_s: float,
) -> bool:
    """A decommissioning worker may be stopped now (rule 5)."""
    return (acknowledged and not has_executors) or elapsed_s >= timeout_s
