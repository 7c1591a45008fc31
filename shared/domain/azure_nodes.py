"""Azure node decisions (pure: no I/O): the VM sizes a cluster can take, the status of a VM
as ARM reports it, the local storage of a node and the data disks to attach for more, and the
size of a cluster's worker scale set.

- Catalog: `NODE_TYPES` (Dv5/Ev5/Fsv2/Lsv3 sizes) and the Spark builds the node bootstrap
  installs (`SPARK_BUILDS`).
- Status (`node_status`): Deleting -> STOPPING; Failed, stopped or deallocated -> LOST;
  Creating, or no power state yet -> STARTING; otherwise RUNNING.
- Local storage (`local_storage_bytes`): what a node's agent measures, the VM size's temporary
  disk (`TEMP_DISK_GIB`, Microsoft's published figures) plus the data disks of its model (the
  OS disk does not count).
- Growing it (`new_data_disks`): empty data disks worth the difference, whole GiB rounded up,
  as few as Azure's largest disk (`MAX_DISK_GIB`) allows, of equal size, on the lowest free
  LUNs; refused (`DataDiskLimit`) beyond the data disks the VM size takes (`DATA_DISK_LIMITS`).
- Scale-set sizing (`pending_slots`, `capacity_after`): the capacity is the scale set's
  `sku.capacity`; instances being deleted no longer count in it, and the capacity above the
  instances listed are workers still coming (STARTING slots). Adding workers raises the
  capacity; removing pending slots lowers it; it never goes below zero.
- Node ids (`driver_vm_name`, `WorkerBook`, `book_match`): the driver's is its VM's name, made
  from the cluster id; a worker's a slot handed out when it is asked for and matched to the
  scale-set instance ARM makes for it (see "node ids" below).
- Readiness (`driver_ready_status`, `worker_ready_status`): RUNNING means ready, from the driver
  agent's `ready` report; a node that fails carries a `NodeFailure`, temporary or permanent
  (see "readiness" below).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from shared.domain.nodes import NodeStatus, NodeType, SparkVersion

NODE_TYPES = [
    NodeType("Standard_D4ds_v5", 4, 16384, "4 vCPUs, 16 GiB, local SSD (Dv5)"),
    NodeType("Standard_D8ds_v5", 8, 32768, "8 vCPUs, 32 GiB, local SSD (Dv5)"),
    NodeType("Standard_D16ds_v5", 16, 65536, "16 vCPUs, 64 GiB, local SSD (Dv5)"),
    NodeType("Standard_D32ds_v5", 32, 131072, "32 vCPUs, 128 GiB, local SSD (Dv5)"),
    NodeType("Standard_E8ds_v5", 8, 65536, "8 vCPUs, 64 GiB, local SSD (Ev5)", "Memory Optimized"),
    NodeType(
        "Standard_E16ds_v5", 16, 131072, "16 vCPUs, 128 GiB, local SSD (Ev5)", "Memory Optimized"
    ),
    NodeType("Standard_F8s_v2", 8, 16384, "8 vCPUs, 16 GiB (Fsv2)", "Compute Optimized"),
    NodeType("Standard_L8s_v3", 8, 65536, "8 vCPUs, 64 GiB, NVMe (Lsv3)", "Storage Optimized"),
]

# Spark version key -> (the Apache Spark release the node bootstrap installs, its Scala).
SPARK_BUILDS: dict[str, tuple[str, str]] = {
    "4.1.x-scala2.13": ("4.1.4", "2.13"),
    "3.5.x-scala2.12": ("3.5.7", "2.12"),
}
SPARK_VERSIONS = [
    SparkVersion(key, f"{key.split('.x')[0]} (Apache Spark {spark}, Scala {scala})")
    for key, (spark, scala) in SPARK_BUILDS.items()
]

GIB = 1 << 30
# Azure's largest managed disk, and the most data disks any VM size takes.
MAX_DISK_GIB = 32767
MAX_DATA_DISKS = 64
# Data disks per VM size of the catalog (Azure's limit of each size); other sizes are given
# MAX_DATA_DISKS, and ARM refuses what their size does not take.
DATA_DISK_LIMITS = {
    "standard_d4ds_v5": 8,
    "standard_d8ds_v5": 16,
    "standard_d16ds_v5": 32,
    "standard_d32ds_v5": 32,
    "standard_e8ds_v5": 16,
    "standard_e16ds_v5": 32,
    "standard_f8s_v2": 16,
    "standard_l8s_v3": 16,
}
# The temporary (resource) disk of each VM size of the catalog, in GiB: Microsoft's published
# figures ("Temp storage (SSD) GiB", "Temp disk (GiB)" for Lsv3) in the Azure VM size tables
# (learn.microsoft.com/azure/virtual-machines/: ddv5-ddsv5-series, edv5-edsv5-series,
# fsv2-series, lsv3-series), not measured here. The bootstrap puts the first Spark local dir on
# it (/mnt/spark), so it is part of a node's local storage. The Lsv3 NVMe disks are not
# mounted, so they do not count. Other sizes count as having none: growing them attaches data
# disks for the whole size asked for.
TEMP_DISK_GIB = {
    "standard_d4ds_v5": 150,
    "standard_d8ds_v5": 300,
    "standard_d16ds_v5": 600,
    "standard_d32ds_v5": 1200,
    "standard_e8ds_v5": 300,
    "standard_e16ds_v5": 600,
    "standard_f8s_v2": 64,
    "standard_l8s_v3": 80,
}
# The disk type of the template's OS disks (infra/templates/cluster.json).
DATA_DISK_SKU = "StandardSSD_LRS"


class DataDiskLimit(ValueError):
    """A node's local storage cannot grow further: its VM size takes no more data disks."""


def node_status(provisioning_state: str | None, power_state: str | None) -> NodeStatus:
    """A VM's (or scale-set instance's) ARM states as a node status."""
    prov = (provisioning_state or "").lower()
    power = (power_state or "").lower()
    if prov == "deleting":
        return "STOPPING"
    if prov == "failed" or prov.startswith("failed/"):
        return "LOST"
    if power in ("stopped", "stopping", "deallocated", "deallocating"):
        return "LOST"
    if prov in ("creating", "") or power in ("", "starting", "unknown"):
        return "STARTING"
    return "RUNNING"


def attached(props: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The data disks of a VM's (or scale-set instance's) model, None when it has no storage
    profile."""
    storage = props.get("storageProfile")
    if not isinstance(storage, dict):
        return None
    return [d for d in storage.get("dataDisks") or [] if isinstance(d, dict)]


def data_disk_bytes(props: Mapping[str, Any]) -> int | None:
    """What the data disks of a VM's model add up to (disks being detached do not count);
    None when the model does not tell."""
    disks = attached(props)
    if disks is None:
        return None
    live = [d for d in disks if not d.get("toBeDetached")]
    if any(d.get("diskSizeGB") is None for d in live):
        return None
    return sum(int(d["diskSizeGB"]) for d in live) * GIB


def max_data_disks(vm_size: str) -> int:
    return DATA_DISK_LIMITS.get(vm_size.lower(), MAX_DATA_DISKS)


def temp_disk_bytes(vm_size: str) -> int:
    """The VM size's temporary disk (TEMP_DISK_GIB); 0 for a size not in the table."""
    return TEMP_DISK_GIB.get(vm_size.lower(), 0) * GIB


def local_storage_bytes(props: Mapping[str, Any], vm_size: str) -> int | None:
    """A node's local storage as its agent measures it and grow_storage counts it: the VM
    size's temporary disk plus the data disks of its model; None when the model does not tell."""
    data = data_disk_bytes(props)
    return None if data is None else temp_disk_bytes(vm_size) + data


def new_data_disks(
    disks: Sequence[Mapping[str, Any]],
    total_bytes: int,
    *,
    max_disks: int,
    node: str = "the node",
    vm_size: str = "",
    temp_bytes: int = 0,
) -> list[dict[str, Any]]:
    """The empty data disks to add to a VM that has `disks` and a temporary disk of
    `temp_bytes` so that its local storage (the temporary disk plus the data disks) adds up to
    `total_bytes`: data disks worth total - temporary disk - data disks there (whole GiB,
    rounded up; never negative). None when they do already, else as few as Azure's largest disk
    allows, of equal size, on the lowest free LUNs. Raises DataDiskLimit when the VM would have
    more than `max_disks`."""
    live = [d for d in disks if not d.get("toBeDetached")]
    have = sum(int(d.get("diskSizeGB") or 0) for d in live)
    want = -(-max(0, total_bytes - temp_bytes) // GIB)
    need = want - have
    if need <= 0:
        return []
    count = -(-need // MAX_DISK_GIB)
    if len(disks) + count > max_disks:
        size = f"a {vm_size} VM" if vm_size else "the VM"
        temp = f"a {temp_bytes // GIB} GiB temporary disk and " if temp_bytes else ""
        raise DataDiskLimit(
            f"The local storage of {node} cannot grow to {-(-total_bytes // GIB)} GiB: it has "
            f"{temp}{len(disks)} data disks ({have} GiB), {count} more would be needed and "
            f"{size} takes at most {max_disks}. Use a node type with more local storage."
        )
    size_gib = -(-need // count)
    used = {int(d["lun"]) for d in disks if d.get("lun") is not None}
    luns = [n for n in range(len(disks) + count) if n not in used][:count]
    return [
        {
            "lun": lun,
            "createOption": "Empty",
            "diskSizeGB": size_gib,
            "caching": "None",
            "managedDisk": {"storageAccountType": DATA_DISK_SKU},
        }
        for lun in luns
    ]


def pending_slots(capacity: int, listed: Sequence[NodeStatus], *, set_deleting: bool) -> int:
    """Workers the scale set still owes: its capacity above the instances it lists (instances
    being deleted no longer count in the capacity); none while the whole set is deleted."""
    if set_deleting:
        return 0
    counted = sum(1 for s in listed if s != "STOPPING")
    return max(0, capacity - counted)


def capacity_after(capacity: int, change: int) -> int:
    """The scale set's capacity after adding (change > 0) or dropping pending slots (< 0)."""
    return max(0, capacity + change)


# ---------------------------------------------------------------------------- node ids
#
# A node's id is known when start_driver/add_workers return and stays the node's for its life
# (the Provisioner port). The driver VM is named by the cluster template from the cluster id
# (infra/templates/cluster.json: `sp-<lower-case cluster id>-driver`), so its id is final at
# once. A scale set in Uniform orchestration names its instances itself (`<set>_<instance id>`,
# ids Azure assigns and may reuse, in no promised order), so a worker's id is a slot the
# provisioner hands out (`<cluster>-worker-<n>`), kept in a `WorkerBook` and matched to an
# instance once ARM lists one; the instance's name is the node's `instance_id`.


def driver_vm_name(cluster_id: str) -> str:
    """The driver VM's name, as cluster.json makes it (variables driverName)."""
    return f"sp-{cluster_id.lower()}-driver"


@dataclass(frozen=True, slots=True)
class Slot:
    """A worker asked for: its node id and, once ARM made it, the scale-set instance (the
    provisioner's key for it: its name and creation time, since Azure may reuse a deleted
    instance's id)."""

    node_id: str
    instance: str = ""
    asked_ms: int = 0


@dataclass(frozen=True, slots=True)
class WorkerBook:
    """A cluster's worker slots, in the order they were asked for; `seq` numbers the next."""

    slots: tuple[Slot, ...] = ()
    seq: int = 0

    @property
    def pending(self) -> list[Slot]:
        """Slots no instance is matched to yet."""
        return [s for s in self.slots if not s.instance]

    def to_body(self) -> dict[str, Any]:
        return {"seq": self.seq, "slots": [[s.node_id, s.instance, s.asked_ms] for s in self.slots]}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WorkerBook:
        slots = tuple(Slot(str(a), str(b), int(c)) for a, b, c in body.get("slots") or [])
        return cls(slots, int(body.get("seq") or 0))


def worker_slot_id(cluster_id: str, seq: int) -> str:
    return f"{cluster_id}-worker-{seq}"


def book_add(book: WorkerBook, cluster_id: str, count: int, now_ms: int) -> WorkerBook:
    """`count` new pending slots."""
    new = tuple(
        Slot(worker_slot_id(cluster_id, book.seq + i), "", now_ms) for i in range(max(0, count))
    )
    return WorkerBook(book.slots + new, book.seq + len(new))


def book_drop(book: WorkerBook, node_ids: Sequence[str]) -> WorkerBook:
    """Without the pending slots among `node_ids` (a slot with an instance goes when the
    instance does)."""
    gone = set(node_ids)
    return replace(book, slots=tuple(s for s in book.slots if s.instance or s.node_id not in gone))


@dataclass(frozen=True, slots=True)
class Match:
    book: WorkerBook
    # Instance name -> node id of every listed instance.
    ids: dict[str, str]
    # Capacity the scale set must gain so that every pending slot gets an instance.
    short: int


def book_match(
    book: WorkerBook,
    cluster_id: str,
    instances: Sequence[tuple[str, NodeStatus]],
    *,
    capacity: int,
    set_deleting: bool,
    now_ms: int,
) -> Match:
    """Match what the scale set lists (instance name and status, oldest first) to the slots:
    an instance keeps its slot; a new instance takes the oldest pending slot, or a new slot
    when none is pending (capacity set elsewhere); a slot whose instance is gone goes. Then
    the capacity still owed (`pending_slots`) against the pending slots: more owed than
    pending gets new slots (ids for the workers coming), fewer makes `short` > 0 (slots asked
    for before the capacity was raised: the caller raises it). A set being deleted keeps no
    pending slot."""
    listed = {name for name, _ in instances}
    kept = [s for s in book.slots if not s.instance or s.instance in listed]
    taken = {s.instance for s in kept if s.instance}
    seq = book.seq
    for name, _ in instances:
        if name in taken:
            continue
        i = next((k for k, s in enumerate(kept) if not s.instance), None)
        if i is None:
            kept.append(Slot(worker_slot_id(cluster_id, seq), name, now_ms))
            seq += 1
        else:
            kept[i] = replace(kept[i], instance=name)
        taken.add(name)
    if set_deleting:
        kept = [s for s in kept if s.instance]
    owed = pending_slots(capacity, [st for _, st in instances], set_deleting=set_deleting)
    pending = sum(1 for s in kept if not s.instance)
    for _ in range(owed - pending):
        kept.append(Slot(worker_slot_id(cluster_id, seq), "", now_ms))
        seq += 1
    out = WorkerBook(tuple(kept), seq)
    return Match(out, {s.instance: s.node_id for s in kept if s.instance}, max(0, pending - owed))


# ---------------------------------------------------------------------------- readiness
#
# RUNNING means ready, in Azure as locally (docs/local-spark.md): the cloud saying a VM runs
# is not enough. The driver's agent (infra/bootstrap/cloud-init.yaml starts it with the node)
# reports `ready` when the Connect server has answered a query, and again as executors
# register; the provisioner keeps the last report (`ReadyReport`), and observe reports:
#
# - the driver RUNNING once its VM runs and it reported ready; STARTING before; LOST with the
#   permanent failure NOT_READY when its VM has run `ready_timeout_s` after it was created
#   without a report (the bootstrap or Spark failed: starting it again would fail again);
# - a worker RUNNING once its VM runs, the driver is ready and an executor is registered for
#   it: the driver reports how many, and the oldest running workers count as the ones with
#   an executor; a worker with none `executor_wait_s` after it was created counts as ready
#   (spark_conf that caps the application's cores, as locally);
# - a VM that ARM reports failed, stopped or deallocated LOST with the temporary failure
#   VM_FAILED (a capacity or allocation problem of the region, or an eviction: a new start
#   may well work).

# How long a driver VM may take from its creation to Spark ready: the boot, cloud-init
# installing Java, Spark and pyspark (infra/bootstrap/cloud-init.yaml), the Spark daemons, the
# first query. Below the planner's startup bound (10 minutes from create, BOOTSTRAP_TIMEOUT,
# shared/domain/reconcile.py) less the deployment's minutes before the VM exists, so that a
# node that never gets ready fails with its own reason, not the generic one.
READY_TIMEOUT_S = 420.0
# A worker VM with no executor this long after its creation counts as ready (as locally).
EXECUTOR_WAIT_S = 300.0


@dataclass(frozen=True, slots=True)
class ReadyReport:
    """The driver agent's last `ready` report: the node, executors registered, when."""

    node_id: str
    executors: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class NodeFailure:
    """Why a node is LOST: a termination code and whether a new start may work (temporary)
    or would fail the same way (permanent)."""

    code: str
    kind: str  # "temporary" | "permanent"
    message: str


NOT_READY = NodeFailure(
    "SPARK_STARTUP_FAILURE",
    "permanent",
    "The driver's VM runs but Spark did not report ready in time (node bootstrap failed).",
)
VM_FAILED = NodeFailure(
    "CLOUD_PROVIDER_LAUNCH_FAILURE",
    "temporary",
    "Azure reports the VM failed, stopped or deallocated.",
)


def driver_ready_status(
    cloud: NodeStatus,
    *,
    reported: bool,
    created_for_s: float,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> tuple[NodeStatus, NodeFailure | None]:
    """The driver's status from its VM's (`node_status`) and the agent's report."""
    if cloud == "LOST":
        return "LOST", VM_FAILED
    if cloud != "RUNNING":
        return cloud, None
    if reported:
        return "RUNNING", None
    if created_for_s >= ready_timeout_s:
        return "LOST", NOT_READY
    return "STARTING", None


def worker_ready_status(
    cloud: NodeStatus,
    *,
    driver_ready: bool,
    rank: int,
    executors: int,
    created_for_s: float,
    executor_wait_s: float = EXECUTOR_WAIT_S,
) -> tuple[NodeStatus, NodeFailure | None]:
    """A worker's status from its VM's and the driver's report; `rank`: its place among the
    cluster's workers whose VM runs, oldest first."""
    if cloud == "LOST":
        return "LOST", VM_FAILED
    if cloud != "RUNNING":
        return cloud, None
    if driver_ready and (rank < executors or created_for_s >= executor_wait_s):
        return "RUNNING", None
    return "STARTING", None
