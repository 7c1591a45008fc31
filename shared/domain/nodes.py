"""The value types of nodes, as provisioners report them and the domain rules read them.

They live with the domain (the planner, the pool rules and the serverless profile decide on
them); shared/ports.py's Provisioner port speaks in them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

NodeStatus = Literal["STARTING", "RUNNING", "STOPPING", "LOST"]


@dataclass(frozen=True, slots=True)
class Node:
    node_id: str
    role: Literal["driver", "worker"]
    status: NodeStatus
    start_ms: int
    private_ip: str = "127.0.0.1"
    instance_id: str = ""
    attrs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeType:
    node_type_id: str
    num_cores: float
    memory_mb: int
    description: str
    category: str = "General Purpose"


@dataclass(frozen=True, slots=True)
class SparkVersion:
    key: str
    name: str


# PENDING_IDLE: starting to be warm; IDLE: warm, ready to join a cluster; PENDING_USED: taken
# by a cluster, not running its Spark role yet; USED: running for a cluster; RETURNING: a
# cluster let it go, its Spark role is stopping (then it is PENDING_IDLE again); STOPPING:
# being removed from the pool; LOST: died.
PoolNodeStatus = Literal[
    "PENDING_IDLE", "IDLE", "PENDING_USED", "USED", "RETURNING", "STOPPING", "LOST"
]


@dataclass(frozen=True, slots=True)
class PoolNode:
    node_id: str
    status: PoolNodeStatus
    # The cluster using it ("" while idle).
    cluster_id: str = ""
    start_ms: int = 0
    # When it last became idle (idle auto-termination counts from here).
    idle_since_ms: int = 0
    # When a cluster took it idle (0: not taken idle, e.g. started for the cluster), and when
    # it ran for that cluster (0: not yet): the pool's acquisition time
    # (shared/domain/pool_scaling.py).
    taken_ms: int = 0
    ready_ms: int = 0
