"""The ARM provisioner: a workspace's managed resource group and its clusters' VMs on Azure.

Layout in Azure:

- workspace W -> resource group `<prefix>W-managed` (managedBy = the platform's resource id,
  tags Vendor=sparkplane and WorkspaceId=W) and in it the deployment `sparkplane-workspace` of
  `infra/templates/workspace.json` (VNet + subnet, NSG, storage account, ...). Parameters:
  `workspaceId`, `location`; its `subnetId` output (or else the group's VNet) is where the
  clusters go.
- cluster C of W -> the deployment `sparkplane-cluster-C` of `infra/templates/cluster.json` in W's
  group: the driver VM and one VM scale set of workers. Parameters: `clusterId`, `location`,
  `driverVmSize`, `workerVmSize`, `workerCount`, `subnetId`, `customData`, `tags` (and
  `adminPublicKey` when one is configured). customData is `infra/bootstrap/cloud-init.yaml` with
  the provisioner's placeholders filled (cluster id, control-plane URL and agent token from
  `NodeRequest.agent_env` (the URL overridden by `arm_control_plane_url` when set), pyspark
  version, agent source), base64-encoded. The template tags every resource it makes with `tags`
  (ClusterId=C, WorkspaceId, Vendor and the user's custom tags); the one virtual machine is the
  driver, the one scale set holds the workers. Names are the template's business.

Nothing here waits. Every call sends the first request of an operation (`begin_*` with
`polling=False`, so no poller thread keeps polling after the function returned) and returns;
what ARM then does is read back by `observe()`, which the scheduled reconciles call. Mapping
what ARM reports to node statuses:

| ARM says                                                   | node status             |
|------------------------------------------------------------|-------------------------|
| cluster deployment Accepted/Running, no driver VM yet      | driver STARTING         |
| ... and no scale set yet                                   | `workerCount` STARTING  |
| cluster deployment Failed and no driver VM                 | driver LOST             |
| deployment over, driver VM but no scale set                | driver LOST             |
| VM / scale-set instance Creating, or not yet powered on    | STARTING                |
| Succeeded (or Updating) and PowerState/running             | RUNNING                 |
| Deleting (the VM, the scale set, or the instance)          | STOPPING                |
| Failed, or stopped/deallocated                             | LOST                    |
| scale-set capacity above its listed instances              | the difference STARTING |
| no VM nor scale set, other ClusterId-tagged resources left | one LOST ("leftovers")  |

Start: `start_driver` deploys the template with the scale set's current capacity (0 for a new
cluster: the request carries no worker count); `add_workers` meanwhile does nothing, and once
the scale set exists sets its capacity. A redeploy is never used to resize or repair: the
driver VM's customData cannot change after creation, and each start issues a new agent token.

Agents: the driver always runs the cluster agent (Spark utilization and its disk). The
deployment's customData has NODE_AGENT=0, so its workers run none. When `add_workers` gets an
`agent_env` (the lifecycle passes one for clusters with autoscaling local storage), the capacity
PATCH also sets the scale set model's customData: the same cloud-init with that agent
environment, NODE_AGENT=1, ROLE=worker and DRIVER_HOST (the driver's IP, read by observe())
filled in. A scale set's customData can change, unlike a VM's; new instances boot with it and
the ones there keep theirs (the upgrade policy is Manual). Such a worker runs the agent in node
mode (disk reports only). Every node's agent gets its node id from the instance metadata
service (compute.name: the driver VM's name, `<scale set>_<instance id>` for a worker), the
ids observe() reports.

Resize sets the scale set's `sku.capacity` with a PATCH through the generic resources API
rather than redeploying the cluster template: one resource-provider operation instead of a
deployment that re-evaluates the driver too, no `DeploymentActive` conflict while an earlier
deployment runs, and no deployment history per resize. Removing particular workers is the
scale set's `delete` action with their instance ids (through the client's pipeline with
`send_request`, as the generic API has no resource actions), which also lowers the capacity;
the scale set's terminate notification lets the worker decommission first. A worker that is
only a pending slot (capacity above the listed instances) goes with a capacity PATCH.

The deny assignment: with `arm_principal_id` (the control plane's own identity), creating a
workspace also PUTs the subscription-scope deployment stack `sparkplane-guard-W`
(`infra/templates/workspace-guard.json`: the group as its one resource), whose deny settings
(`denyWriteAndDelete`, applied to child scopes, the control plane excluded) keep everyone else,
subscription Owners included, from writing or deleting in the group
(shared/domain/azure_guard.py); deleting the workspace deletes the stack, detaching the group.

Terminating cancels a running cluster deployment, deletes every resource tagged
ClusterId=C in the group (compute first; a NIC or disk still attached answers 409 and goes in
a later pass) and deletes the deployment record. Deleting a workspace deletes its group
(force-deleting VMs and scale sets).

Local storage: a node's local storage is what its agent measures, the file systems of its Spark
local dirs: the VM's temporary disk (the first local dir, /mnt/spark) plus each data disk
attached for it. `grow_storage` attaches empty managed data disks (StandardSSD_LRS, like the
template's OS disks) to the node's VM until the temporary disk (TEMP_DISK_GIB, by VM size) and
the data disks add up to the total asked for: a PUT of the worker's scale-set instance
(scale-set instances have no PATCH; the body is the instance as read, its
`storageProfile.dataDisks` extended) or a PATCH of the driver VM's `storageProfile.dataDisks`
(the whole list: a PATCH replaces arrays). The OS disk does not count. observe() reports the
same sum, temporary disk plus data disks, as `Node.attrs["disk_total_bytes"]` (read from the
same responses, no extra request). The node formats and mounts a new disk itself
(infra/bootstrap/cloud-init.yaml, mount-data-disks.sh). The sizes are nominal GiB: a file
system shows a little less than its disk, so an agent reports slightly below what was asked.

Instance pools are not built on ARM: a warm VM would need a node agent that learns its cluster
role after boot, and nodes get their role from cloud-init at creation. The pool methods answer
"none" or raise `ProvisionerUnsupported`, and so do starts that ask for a pool.

`NodeRequest.conf_files` (files for each node's Spark conf directory) travel in customData too:
the `CONF_FILES` placeholder is base64 of the gzipped JSON object, which the bootstrap writes
out (infra/bootstrap/cloud-init.yaml, write_conf_files.py). So do `spark_conf` (`SPARK_CONF`)
and `spark_env_vars` (`SPARK_ENV`), encoded the same way and always filled (`{}` when empty):
the node's write_spark_conf.py merges spark_conf into the spark-defaults.conf it writes, its
own settings winning where they are pinned (addresses, ports, the master URL, the local dirs:
a pinned key of spark_conf is dropped, as the local provisioner does), and writes
spark_env_vars to the environment file the Spark units read before the node's own. A variable
that `spark_env_problem` refuses (shared/domain/node_env.py: what the node sets itself, a name
that injects code into a shell, the loader, the JVM or Python, a value with a line break) is
refused here, before the deployment is sent, and again on the node.

The cluster's Spark credentials (`NodeRequest.spark_auth_secret`, `connect_token`;
shared/domain/spark_auth.py) travel in customData too (`SPARK_AUTH_SECRET`, `CONNECT_TOKEN`),
a securestring parameter kept out of the deployment's history: the node pins
spark.authenticate and its secret in spark-defaults.conf and gives the Connect server its token
in a root-only EnvironmentFile; a reserved key of spark_conf (spark.authenticate*) is dropped
here and again on the node.

The ports give `observe`, `remove_workers` and `stop_cluster` a cluster id only, so the group
of a cluster is remembered from `start_driver`/`add_workers` and otherwise found again with
one subscription-wide tag query (ClusterId=C); a cluster with no tagged resource at all (its
deployment has just started) is looked for by probing the managed groups for its deployment.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.rest import HttpRequest
from azure.mgmt.resource.deployments.models import (
    Deployment,
    DeploymentParameter,
    DeploymentProperties,
)
from azure.mgmt.resource.resources.models import GenericResource, ResourceGroup, Sku

from shared.domain import azure_guard, spark_auth
from shared.domain.node_env import spark_env_problem
from shared.ports import (
    Node,
    NodeRequest,
    NodeStatus,
    NodeType,
    PoolNode,
    PoolRequest,
    ProvisionerUnsupported,
    SparkVersion,
)

if TYPE_CHECKING:
    from azure.mgmt.resource.deployments import DeploymentsMgmtClient
    from azure.mgmt.resource.resources import ResourceManagementClient

    from shared.settings import Settings

log = logging.getLogger("sparkplane.arm")

ROOT = Path(__file__).resolve().parents[2]

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

# api-version of each resource type this adapter reads or deletes through the generic API.
API_VERSIONS = {
    "microsoft.compute/virtualmachines": "2024-07-01",
    "microsoft.compute/virtualmachinescalesets": "2024-07-01",
    "microsoft.compute/disks": "2024-03-02",
    "microsoft.network/networkinterfaces": "2024-05-01",
    "microsoft.network/publicipaddresses": "2024-05-01",
    "microsoft.network/networksecuritygroups": "2024-05-01",
    "microsoft.network/virtualnetworks": "2024-05-01",
}
COMPUTE_API = API_VERSIONS["microsoft.compute/virtualmachines"]
# The scale-set NIC listing is served by Microsoft.Network with its own, older api-version.
VMSS_NIC_API = "2018-10-01"
VM = "microsoft.compute/virtualmachines"
VMSS = "microsoft.compute/virtualmachinescalesets"
# Deleted in the first pass of a termination; the rest (NICs, disks, IPs) may still be
# attached to them and is retried by the next pass.
COMPUTE = (VM, VMSS)
FORCE_DELETION_TYPES = "Microsoft.Compute/virtualMachines,Microsoft.Compute/virtualMachineScaleSets"

WORKSPACE_DEPLOYMENT = "sparkplane-workspace"
# The deployment stacks that put a deny assignment on each managed group
# (shared/domain/azure_guard.py).
STACKS_API = "2024-03-01"
ACTIVE_DEPLOYMENT = {"Accepted", "Running", "Creating", "Created", "Ready", "Updating", "Waiting"}
# Azure caps tags per resource, and tag names may not contain these characters.
MAX_TAGS = 50
BAD_TAG_NAME = re.compile(r"[<>%&\\?/]")
# The Spark Connect port of a driver node (infra/bootstrap/cloud-init.yaml).
CONNECT_PORT = 15002
# Azure's limit on customData (base64 text).
MAX_CUSTOM_DATA = 87380
# What a placeholder value may contain (URLs, ids, versions, tokens; no blanks, quotes, $, &).
SAFE_VALUE = re.compile(r"[A-Za-z0-9._:/?=+@,%-]*")
FRESH_S = 30.0

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

POOLS_UNSUPPORTED = (
    "Instance pools are not available with the Azure Resource Manager provisioner yet: a warm "
    "pool VM would need a node agent that learns its cluster role after boot, and today a node "
    "gets its role when it is created. Create clusters without instance_pool_id (and without "
    "driver_instance_pool_id)."
)

# A file of NodeRequest.conf_files: a plain file name in the Spark conf directory. The
# bootstrap writes spark-defaults.conf itself, and spark-env.sh would be run by every Spark
# script.
CONF_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RESERVED_CONF_FILES = frozenset({"spark-defaults.conf", "spark-env.sh"})

WorkspaceStatus = Literal["PROVISIONING", "READY", "FAILED", "DELETING", "NOT_FOUND"]


class WorkspaceNotReady(RuntimeError):
    """A cluster was asked for in a workspace whose network is not deployed (yet)."""


class DataDiskLimitReached(ProvisionerUnsupported):
    """A node's local storage cannot grow further: its VM size takes no more data disks.
    Nothing was sent."""


def cluster_deployment(cluster_id: str) -> str:
    return f"sparkplane-cluster-{cluster_id}"


def _type(resource_id_or_type: str) -> str:
    """`Microsoft.Compute/virtualMachines` of a resource id (or of a type), lower-cased."""
    parts = resource_id_or_type.strip("/").split("/")
    if "providers" in [p.lower() for p in parts]:
        i = max(i for i, p in enumerate(parts) if p.lower() == "providers")
        parts = parts[i + 1 :]
        # namespace/type/name[/subtype/subname...]
        types = [parts[0], *parts[1::2]]
        return "/".join(types).lower()
    return resource_id_or_type.lower()


def _group_of(resource_id: str) -> str | None:
    parts = resource_id.strip("/").split("/")
    for i, p in enumerate(parts[:-1]):
        if p.lower() == "resourcegroups":
            return parts[i + 1]
    return None


def _ms(t: datetime | str | None) -> int:
    if t is None:
        return 0
    if isinstance(t, str):
        m = re.match(r"(.*?)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", t.strip())
        if not m:
            return 0
        frac = (m.group(2) or "")[:7]
        try:
            t = datetime.fromisoformat(m.group(1) + frac + (m.group(3) or "+00:00"))
        except ValueError:
            return 0
    return int(t.timestamp() * 1000)


def _statuses(view: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """(provisioning state, power state) of an instance view, lower-cased."""
    prov = power = None
    for s in (view or {}).get("statuses") or []:
        code = str(s.get("code", ""))
        if code.startswith("ProvisioningState/"):
            prov = code.split("/", 1)[1].lower()
        elif code.startswith("PowerState/"):
            power = code.split("/", 1)[1].lower()
    return prov, power


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


def sanitize_tags(tags: Mapping[str, str], fixed: Mapping[str, str]) -> dict[str, str]:
    """Tags Azure accepts: `fixed` first (they win), then the user's, valid names only, values
    cut to 256 characters, at most 50."""
    out = {k: str(v)[:256] for k, v in fixed.items()}
    for k, v in tags.items():
        if len(out) >= MAX_TAGS:
            break
        if k in out or not k or len(k) > 512 or BAD_TAG_NAME.search(k):
            continue
        out[k] = str(v)[:256]
    return out


def custom_data(template: str, values: Mapping[str, str]) -> str:
    """The base64 customData of a cluster: the node cloud-init template
    (infra/bootstrap/cloud-init.yaml) with the provisioner's placeholders filled.

    Each `__SPARKPLANE_<NAME>__` with a non-empty value is replaced; an empty one is left for
    the bootstrap to treat as "not given". In the deployment's customData, ROLE and DRIVER_HOST
    are the cluster template's to fill (only it knows which resource is the driver and the
    driver's address); the scale set's own customData for workers with the node agent
    (`ArmProvisioner.add_workers`) is filled whole here, the driver's address read back. The values
    land in files the bootstrap sources with bash, so only characters that cannot end or
    extend a shell assignment are accepted.
    """
    text = template
    for name, value in values.items():
        if not SAFE_VALUE.fullmatch(value):
            raise ValueError(f"{name} has characters a node's environment file cannot carry")
        if value:
            text = text.replace(f"__SPARKPLANE_{name}__", value)
    data = base64.b64encode(text.encode()).decode()
    if len(data) > MAX_CUSTOM_DATA:
        raise ValueError(f"customData is {len(data)} characters; Azure allows {MAX_CUSTOM_DATA}")
    return data


def conf_files_value(files: Mapping[str, str]) -> str:
    """The CONF_FILES placeholder's value: base64 of the gzipped JSON object name -> content
    (base64 only has characters a node's environment file can carry)."""
    for name in files:
        if not CONF_FILE_NAME.fullmatch(name) or name in RESERVED_CONF_FILES:
            raise ValueError(
                f"conf file {name!r}: a plain file name is expected (letters, digits, '.', '_', "
                f"'-'), other than {', '.join(sorted(RESERVED_CONF_FILES))}"
            )
    return _packed(files)


def spark_conf_value(conf: Mapping[str, str]) -> str:
    """The SPARK_CONF placeholder's value: the cluster's spark_conf, packed like CONF_FILES.
    Any key and value can be written to spark-defaults.conf (the node escapes them); pinned
    keys are dropped on the node."""
    for key, value in conf.items():
        if not isinstance(key, str) or not key.strip() or not isinstance(value, str):
            raise ValueError(f"spark_conf {key!r}: keys must be non-empty strings, values strings")
    return _packed(conf)


def spark_env_value(env: Mapping[str, str]) -> str:
    """The SPARK_ENV placeholder's value: the cluster's spark_env_vars, packed like CONF_FILES.
    Raises ValueError when a variable cannot be set on the nodes (spark_env_problem)."""
    problems = [spark_env_problem(k, v) for k, v in sorted(env.items())]
    if any(problems):
        raise ValueError(
            "spark_env_vars cannot be set on the nodes: " + "; ".join(p for p in problems if p)
        )
    return _packed(env)


def _packed(obj: Mapping[str, str]) -> str:
    """base64 of the gzipped JSON object (base64 only has characters a node's environment file
    can carry)."""
    text = json.dumps(dict(sorted(obj.items())), separators=(",", ":"))
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


def _attached(props: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The data disks of a VM's (or scale-set instance's) model, None when it has no storage
    profile."""
    storage = props.get("storageProfile")
    if not isinstance(storage, dict):
        return None
    return [d for d in storage.get("dataDisks") or [] if isinstance(d, dict)]


def data_disk_bytes(props: Mapping[str, Any]) -> int | None:
    """What the data disks of a VM's model add up to (disks being detached do not count);
    None when the model does not tell."""
    disks = _attached(props)
    if disks is None:
        return None
    live = [d for d in disks if not d.get("toBeDetached")]
    if any(d.get("diskSizeGB") is None for d in live):
        return None
    return sum(int(d["diskSizeGB"]) for d in live) * GIB


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
    allows, of equal size, on the lowest free LUNs. Raises DataDiskLimitReached when the VM
    would have more than `max_disks`."""
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
        raise DataDiskLimitReached(
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


def _disk_attrs(props: Mapping[str, Any], vm_size: str) -> dict[str, str]:
    total = local_storage_bytes(props, vm_size)
    return {} if total is None else {"disk_total_bytes": str(total)}


@dataclass
class _Res:
    id: str
    name: str
    type: str  # lower-cased
    provisioning_state: str | None
    created_ms: int
    sku: dict[str, Any] | None = None


@dataclass
class _Seen:
    """What the last observe() of a cluster found (add/remove_workers work from it)."""

    group: str | None
    at: float
    deployment_state: str | None = None
    vm: _Res | None = None
    vmss: _Res | None = None
    capacity: int = 0
    # The driver's private IP (the workers' DRIVER_HOST), when the driver VM has one.
    driver_ip: str = ""
    # worker node id -> scale-set instance id
    instances: dict[str, str] = field(default_factory=dict)

    @property
    def deploying(self) -> bool:
        return self.deployment_state in ACTIVE_DEPLOYMENT


@dataclass
class _Workspace:
    location: str
    subnet_id: str


class ArmProvisioner:
    """`Provisioner` on Azure Resource Manager, plus the workspace operations of the admin
    endpoints (`create_workspace`, `workspace_status`, `delete_workspace`)."""

    def __init__(
        self,
        resources: ResourceManagementClient,
        deployments: DeploymentsMgmtClient,
        *,
        subscription_id: str,
        templates_dir: Path,
        platform_resource_id: str = "",
        default_location: str = "westeurope",
        group_prefix: str = "sparkplane-",
        cloud_init: Path | None = None,
        agent_source_url: str = "",
        agent_source_sha256: str = "",
        admin_public_key: str = "",
        control_plane_url: str = "",
        principal_id: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rm = resources
        self.dm = deployments
        self.subscription_id = subscription_id
        self.templates_dir = Path(templates_dir)
        self.platform_resource_id = platform_resource_id
        self.default_location = default_location
        self.group_prefix = group_prefix
        self.cloud_init = Path(cloud_init or ROOT / "infra" / "bootstrap" / "cloud-init.yaml")
        self.agent_source_url = agent_source_url
        self.agent_source_sha256 = agent_source_sha256
        self.admin_public_key = admin_public_key
        self.control_plane_url = control_plane_url
        # The control plane's own identity (object id), the one principal the deny assignment
        # of each managed group leaves out; empty: the groups get no deny assignment.
        self.principal_id = principal_id
        self._clock = clock
        self._lock = threading.Lock()
        self._templates: dict[str, Any] = {}
        self._groups: dict[str, str] = {}
        self._seen: dict[str, _Seen] = {}
        self._workspaces: dict[str, _Workspace] = {}
        self._apis: dict[str, str] = dict(API_VERSIONS)

    @classmethod
    def from_settings(
        cls, s: Settings, *, credential: Any = None, **client_kwargs: Any
    ) -> ArmProvisioner:
        """Clients for `s.arm_endpoint` with the app's managed identity (`DefaultAzureCredential`)
        unless a credential is given; `client_kwargs` go to both clients (tests pass
        `transport=`)."""
        from azure.mgmt.resource.deployments import DeploymentsMgmtClient
        from azure.mgmt.resource.resources import ResourceManagementClient

        if not s.arm_subscription_id:
            raise ValueError("provisioner=arm needs SPARKPLANE_ARM_SUBSCRIPTION_ID")
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        # A throttled or failing call is retried a few times, not for minutes: the reconcile
        # that made it is retried anyway.
        client_kwargs.setdefault("retry_total", 3)
        rm = ResourceManagementClient(
            credential, s.arm_subscription_id, base_url=s.arm_endpoint, **client_kwargs
        )
        dm = DeploymentsMgmtClient(
            credential, s.arm_subscription_id, base_url=s.arm_endpoint, **client_kwargs
        )
        return cls(
            rm,
            dm,
            subscription_id=s.arm_subscription_id,
            templates_dir=Path(s.arm_templates_dir or ROOT / "infra" / "templates"),
            platform_resource_id=s.arm_platform_resource_id,
            default_location=s.arm_location,
            group_prefix=s.arm_resource_group_prefix,
            cloud_init=Path(s.arm_cloud_init) if s.arm_cloud_init else None,
            agent_source_url=s.arm_agent_source_url,
            agent_source_sha256=s.arm_agent_source_sha256,
            admin_public_key=s.arm_admin_public_key,
            control_plane_url=s.arm_control_plane_url,
            principal_id=s.arm_principal_id,
        )

    # ------------------------------------------------------------------------ naming

    def group_name(self, workspace_id: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.()-]", "-", workspace_id)
        return f"{self.group_prefix}{safe}-managed"[:90]

    def _ours(self, group: str | None) -> bool:
        g = (group or "").lower()
        return g.startswith(self.group_prefix.lower()) and g.endswith("-managed")

    def _template(self, name: str) -> Any:
        with self._lock:
            t = self._templates.get(name)
        if t is None:
            path = self.templates_dir / f"{name}.json"
            t = json.loads(path.read_text())
            with self._lock:
                self._templates[name] = t
        return t

    # ------------------------------------------------------------------------ workspaces

    def create_workspace(self, workspace_id: str, region: str | None = None) -> None:
        """Makes the managed resource group (a quick synchronous PUT) and starts the workspace
        deployment in it. Calling it again repairs a failed deployment; while one runs, the
        second start is a no-op."""
        location = region or self.default_location
        group = self.group_name(workspace_id)
        self.rm.resource_groups.create_or_update(
            group,
            ResourceGroup(
                location=location,
                managed_by=self.platform_resource_id or None,
                tags={"Vendor": "sparkplane", "WorkspaceId": workspace_id},
            ),
        )
        params = {"workspaceId": workspace_id, "location": location}
        self._deploy(group, WORKSPACE_DEPLOYMENT, self._template("workspace"), params)
        if self.principal_id:
            self._guard(workspace_id, group, location)

    def _stack_url(self, workspace_id: str) -> str:
        name = azure_guard.stack_name(workspace_id)
        return (
            f"/subscriptions/{self.subscription_id}/providers/Microsoft.Resources"
            f"/deploymentStacks/{name}"
        )

    def _guard(self, workspace_id: str, group: str, location: str) -> None:
        """Starts the deployment stack whose deny settings keep everyone but the control plane
        from writing or deleting in the group (shared/domain/azure_guard.py)."""
        body = azure_guard.guard_stack(
            template=self._template("workspace-guard"),
            group=group,
            location=location,
            managed_by=self.platform_resource_id,
            tags={"Vendor": "sparkplane", "WorkspaceId": workspace_id},
            control_plane_principal_id=self.principal_id,
        )
        resp = self._send(
            "PUT", self._stack_url(workspace_id), {"api-version": STACKS_API}, json=body
        )
        if resp.status_code == 409:
            # The stack is being deployed or deleted already: a later create_workspace repairs.
            log.info("deployment stack of %s busy; not restarted", group)
            return
        resp.raise_for_status()

    def workspace_status(self, workspace_id: str) -> WorkspaceStatus:
        group = self.group_name(workspace_id)
        try:
            rg = self.rm.resource_groups.get(group)
        except ResourceNotFoundError:
            return "NOT_FOUND"
        if rg.properties and (rg.properties.provisioning_state or "") == "Deleting":
            return "DELETING"
        state = self._deployment_state(group, WORKSPACE_DEPLOYMENT)
        if state == "Succeeded":
            return "READY"
        if state is None or state in ("Failed", "Canceled", "Deleting", "Deleted"):
            return "FAILED"
        return "PROVISIONING"

    def delete_workspace(self, workspace_id: str) -> None:
        """Starts deleting the managed resource group and everything in it."""
        group = self.group_name(workspace_id)
        with contextlib.suppress(ResourceNotFoundError):
            self.rm.resource_groups.begin_delete(
                group, force_deletion_types=FORCE_DELETION_TYPES, polling=False
            )
        if self.principal_id:
            # The group is going (the control plane is not denied): its guard goes too, detaching.
            resp = self._send(
                "DELETE",
                self._stack_url(workspace_id),
                {
                    "api-version": STACKS_API,
                    "unmanageAction.Resources": "detach",
                    "unmanageAction.ResourceGroups": "detach",
                },
            )
            if resp.status_code not in (404, 409):  # gone already, or being deleted
                resp.raise_for_status()
        with self._lock:
            self._workspaces.pop(workspace_id, None)
            for cid in [c for c, g in self._groups.items() if g == group]:
                self._groups.pop(cid, None)
                self._seen.pop(cid, None)

    def _workspace(self, workspace_id: str) -> _Workspace:
        """The location and subnet clusters of the workspace go to (read once, then kept)."""
        with self._lock:
            ws = self._workspaces.get(workspace_id)
        if ws is not None:
            return ws
        group = self.group_name(workspace_id)
        try:
            location = self.rm.resource_groups.get(group).location
            dep = self.dm.deployments.get(group, WORKSPACE_DEPLOYMENT)
        except ResourceNotFoundError as e:
            raise WorkspaceNotReady(f"workspace {workspace_id} has no managed group") from e
        props = dep.properties
        state = props.provisioning_state if props else None
        if state != "Succeeded":
            raise WorkspaceNotReady(f"workspace {workspace_id}: deployment is {state}")
        outputs = (props.outputs if props else None) or {}
        subnet = (outputs.get("subnetId") or {}).get("value") or self._find_subnet(group)
        if not subnet:
            raise WorkspaceNotReady(f"workspace {workspace_id}: no subnet in {group}")
        ws = _Workspace(location=location, subnet_id=subnet)
        with self._lock:
            self._workspaces[workspace_id] = ws
        return ws

    def _find_subnet(self, group: str) -> str | None:
        """Without a `subnetId` output: the first subnet of the group's first VNet."""
        vnet_type = "Microsoft.Network/virtualNetworks"
        for r in self.rm.resources.list_by_resource_group(
            group, filter=f"resourceType eq '{vnet_type}'"
        ):
            if r.id is None:  # every listed resource has an id; the SDK types it optional
                continue
            vnet = self.rm.resources.get_by_id(r.id, api_version=self._api(vnet_type))
            for subnet in (vnet.properties or {}).get("subnets") or []:
                return subnet.get("id")
        return None

    # ------------------------------------------------------------------------ catalog

    def node_types(self) -> list[NodeType]:
        return list(NODE_TYPES)

    def spark_versions(self) -> list[SparkVersion]:
        return list(SPARK_VERSIONS)

    # ------------------------------------------------------------------------ clusters

    def start_driver(self, req: NodeRequest) -> Node:
        """Starts the cluster deployment (driver VM and scale set). The scale set keeps the
        capacity it has; a new one starts empty and `add_workers` sizes it once it exists."""
        if req.driver_pool is not None or req.pool is not None:
            raise ProvisionerUnsupported(POOLS_UNSUPPORTED)
        group = self.group_name(req.workspace_id)
        self._remember(req.cluster_id, group)
        seen = self._recent(req.cluster_id)
        workers = seen.capacity if seen is not None and seen.vmss is not None else 0
        self._deploy_cluster(req, group, workers)
        return Node(f"{req.cluster_id}-driver-pending", "driver", "STARTING", self._now_ms())

    def add_workers(self, req: NodeRequest, count: int) -> list[Node]:
        """Raises the scale set's capacity by `count`. With `req.agent_env` (clusters with
        autoscaling local storage) the same PATCH gives the scale set's model a customData whose
        workers run the node agent (`_worker_custom_data`); new instances boot with it, the ones
        there keep theirs (a scale set's customData reaches only the instances created after it
        changed). Without, the model keeps the customData it has: the deployment's, whose
        workers run no agent."""
        if req.pool is not None:
            raise ProvisionerUnsupported(POOLS_UNSUPPORTED)
        group = self.group_name(req.workspace_id)
        self._remember(req.cluster_id, group)
        seen = self._view(req.cluster_id)
        if count <= 0:
            return []
        if seen.vmss is None or (seen.vmss.provisioning_state or "") == "Deleting":
            # The cluster deployment makes the scale set (the next reconcile sizes it). If it
            # is not making one, observe() reports the cluster's driver lost: a redeploy cannot
            # mend it, since a VM's customData (the driver's cloud-init) is immutable.
            return []
        custom = None
        if req.agent_env:
            if not seen.driver_ip:
                # The workers' customData names the driver; without its address yet (or any
                # more), no worker is added and the next reconcile asks again.
                log.info("%s: the driver has no address yet; workers wait", req.cluster_id)
                return []
            custom = self._worker_custom_data(req, seen.driver_ip)
        self._set_capacity(seen, seen.capacity + count, custom_data=custom)
        now = self._now_ms()
        return [
            Node(f"{req.cluster_id}-worker-pending-{i}", "worker", "STARTING", now)
            for i in range(count)
        ]

    def remove_workers(self, cluster_id: str, node_ids: Sequence[str]) -> None:
        """Deletes the given scale-set instances (which lowers the capacity). Pending slots
        (capacity not yet listed as instances) go first, by lowering the capacity, and alone:
        mixing a capacity PATCH with an instance delete would let the scale set pick its own
        victims. What is left is removed by the next reconcile.

        Graceful decommission happens on the node: the scale set's terminate notification
        (Scheduled Events) gives the node agent time to decommission its Spark worker."""
        seen = self._view(cluster_id)
        if seen.vmss is None:
            return
        pending = [n for n in node_ids if n.startswith(f"{cluster_id}-worker-pending-")]
        if pending:
            self._set_capacity(seen, max(0, seen.capacity - len(pending)))
            return
        instance_ids = [seen.instances[n] for n in node_ids if n in seen.instances]
        if not instance_ids:
            return
        resp = self._send(
            "POST",
            f"{seen.vmss.id}/delete",
            {"api-version": COMPUTE_API},
            json={"instanceIds": instance_ids},
        )
        if resp.status_code == 404:
            return
        if resp.status_code == 409:
            log.info("scale set busy; instances are removed by the next reconcile")
            return
        resp.raise_for_status()
        seen.capacity = max(0, seen.capacity - len(instance_ids))

    def stop_cluster(self, cluster_id: str) -> None:
        group, listed = self._locate(cluster_id)
        if group is None:
            return
        name = cluster_deployment(cluster_id)
        state = self._deployment_state(group, name)
        if state in ACTIVE_DEPLOYMENT:
            try:
                self.dm.deployments.cancel(group, name)
            except HttpResponseError as e:
                if e.status_code not in (404, 409):
                    raise
        tagged = listed if listed is not None else self._tagged(group, cluster_id)
        compute = [r for r in tagged if r.type in COMPUTE]
        first = compute or tagged  # compute first; the rest once it is gone
        for r in first:
            if (r.provisioning_state or "") == "Deleting":
                continue
            try:
                self.rm.resources.begin_delete_by_id(
                    r.id, api_version=self._api(r.type), polling=False
                )
            except ResourceNotFoundError:
                pass
            except HttpResponseError as e:
                if e.status_code != 409:  # still attached: the next pass
                    raise
        if state is not None and state != "Deleting":
            # The record too, so a failed deployment stops reporting a lost driver. A running
            # one refuses (409) until its cancellation lands; the next pass deletes it.
            try:
                self.dm.deployments.begin_delete(group, name, polling=False)
            except HttpResponseError as e:
                if e.status_code not in (404, 409):
                    raise
        with self._lock:
            self._seen.pop(cluster_id, None)

    def cluster_ids(self) -> set[str]:
        out: set[str] = set()
        for r in self.rm.resources.list(filter="tagName eq 'ClusterId'"):
            tags = r.tags or {}
            if (
                self._ours(_group_of(r.id or ""))
                and tags.get("Vendor", "sparkplane") == "sparkplane"
            ):
                cid = tags.get("ClusterId")
                if cid:
                    out.add(cid)
        return out

    # ------------------------------------------------------------------------ local storage

    def grow_storage(self, cluster_id: str, node_id: str, total_bytes: int) -> None:
        """Attaches empty managed data disks to the node's VM until its local storage (the VM
        size's temporary disk plus its data disks, what the node's agent reports) adds up to
        `total_bytes` (see `new_data_disks`): one GET of the VM's model, then (when it has too
        little) one PUT of the scale-set instance or PATCH of the driver VM, not waited for.
        The model lists a disk as soon as ARM accepted it, so a repeated call sends nothing.
        A node that is no VM (yet: a pending slot) or no longer is left alone; a VM busy with
        another operation (409) is grown by a later call. Raises DataDiskLimitReached when the
        VM size takes too few disks."""
        if total_bytes <= 0:
            return
        seen = self._view(cluster_id)
        target = self._storage_target(seen, node_id)
        if target is None:
            log.info(
                "%s of cluster %s is no VM (yet): its storage is not grown", node_id, cluster_id
            )
            return
        url, instance = target
        body = self._get_json(url, {"api-version": COMPUTE_API})
        if body is None:
            return
        props = body.setdefault("properties", {})
        if (props.get("provisioningState") or "") == "Deleting":
            return
        disks = _attached(props) or []
        if instance:
            # The instance's own sku, else the scale set's (one size for all its instances).
            sku = body.get("sku") or (seen.vmss.sku if seen.vmss else None) or {}
            vm_size = str(sku.get("name") or "")
        else:
            vm_size = str((props.get("hardwareProfile") or {}).get("vmSize") or "")
        add = new_data_disks(
            disks,
            total_bytes,
            max_disks=max_data_disks(vm_size),
            node=node_id,
            vm_size=vm_size,
            temp_bytes=temp_disk_bytes(vm_size),
        )
        if not add:
            return
        if instance:
            # Scale-set instances take a PUT only: the model as read, with the new disks.
            # (Their disks go with the instance; deleteOption is for Flexible scale sets.)
            props.setdefault("storageProfile", {})["dataDisks"] = [*disks, *add]
            resp = self._send("PUT", url, {"api-version": COMPUTE_API}, json=body)
            if resp.status_code == 404:
                return
            if resp.status_code == 409:
                log.info("%s is busy; its storage is grown by a later call", node_id)
                return
            resp.raise_for_status()
            return
        # A VM's implicit disks outlive it unless told otherwise (they carry no ClusterId tag
        # for stop_cluster to find).
        for d in add:
            d["deleteOption"] = "Delete"
        patch = GenericResource(properties={"storageProfile": {"dataDisks": [*disks, *add]}})
        try:
            self.rm.resources.begin_update_by_id(url, patch, api_version=COMPUTE_API, polling=False)
        except ResourceNotFoundError:
            return
        except HttpResponseError as e:
            if e.status_code != 409:
                raise
            log.info("%s is busy; its storage is grown by a later call", node_id)

    def _storage_target(self, seen: _Seen, node_id: str) -> tuple[str, bool] | None:
        """(resource id, is a scale-set instance) of a node's VM."""
        if seen.vm is not None and node_id == seen.vm.name:
            return seen.vm.id, False
        if seen.vmss is None:
            return None
        instance_id = seen.instances.get(node_id)
        if instance_id is None:
            # A worker the last observation did not list yet: <scale set>_<instance id>.
            prefix, _, suffix = node_id.rpartition("_")
            if prefix != seen.vmss.name or not suffix.isdigit():
                return None
            instance_id = suffix
        return f"{seen.vmss.id}/virtualMachines/{instance_id}", True

    # ------------------------------------------------------------------------ instance pools

    def pool_nodes(self, pool_id: str) -> list[PoolNode]:
        return []

    def pool_ids(self) -> set[str]:
        return set()

    def add_idle(self, req: PoolRequest, count: int) -> list[PoolNode]:
        raise ProvisionerUnsupported(POOLS_UNSUPPORTED)

    def remove_idle(self, pool_id: str, node_ids: Sequence[str]) -> None:
        raise ProvisionerUnsupported(POOLS_UNSUPPORTED)

    # ------------------------------------------------------------------------ observe

    def observe(self, cluster_id: str) -> list[Node]:
        group, listed = self._locate(cluster_id)
        if group is None:
            with self._lock:
                self._seen[cluster_id] = _Seen(group=None, at=self._clock())
            return []
        dep = self._get_deployment(group, cluster_deployment(cluster_id))
        dep_state = dep.properties.provisioning_state if dep and dep.properties else None
        resources = listed if listed is not None else self._tagged(group, cluster_id)
        seen = _Seen(group=group, at=self._clock(), deployment_state=dep_state)
        vm = next((r for r in resources if r.type == VM), None)
        vmss = next((r for r in resources if r.type == VMSS), None)
        nodes: list[Node] = []
        dep_ms = _ms(dep.properties.timestamp) if dep and dep.properties else 0

        # ---- the driver
        if vm is not None:
            seen.vm = vm
            driver = self._driver(vm)
            seen.driver_ip = driver.private_ip
            settled = dep_state is not None and not seen.deploying
            if settled and vmss is None and driver.status != "STOPPING":
                # The deployment is over and there is no scale set (it failed, or was
                # deleted): no worker can ever join, so the cluster is reported broken.
                driver = replace(driver, status="LOST")
            nodes.append(driver)
        elif seen.deploying:
            nodes.append(Node(f"{cluster_id}-driver-pending", "driver", "STARTING", dep_ms))
        elif dep_state == "Failed":
            nodes.append(Node(f"{cluster_id}-driver-pending", "driver", "LOST", dep_ms))

        # ---- the workers
        pending = 0
        if vmss is not None:
            seen.vmss = vmss
            seen.capacity = int((vmss.sku or {}).get("capacity") or 0)
            workers = self._workers(vmss, seen)
            nodes.extend(workers)
            if (vmss.provisioning_state or "") != "Deleting":
                # Instances being deleted no longer count in the capacity.
                counted = sum(1 for w in workers if w.status != "STOPPING")
                pending = max(0, seen.capacity - counted)
        elif seen.deploying and dep is not None and dep.properties:
            params = dep.properties.parameters or {}
            pending = int((params.get("workerCount") or {}).get("value") or 0)
        nodes.extend(
            Node(f"{cluster_id}-worker-pending-{i}", "worker", "STARTING", dep_ms)
            for i in range(pending)
        )

        # ---- what a termination left behind (NICs, disks, IPs without their VM)
        if vm is None and vmss is None and not seen.deploying:
            rest = [r for r in resources if r.type not in COMPUTE]
            if rest:
                deleting = all((r.provisioning_state or "") == "Deleting" for r in rest)
                status: NodeStatus = "STOPPING" if deleting else "LOST"
                nodes.append(Node(f"{cluster_id}-leftovers", "worker", status, 0))
        with self._lock:
            self._seen[cluster_id] = seen
        return nodes

    # ------------------------------------------------------------------------ observe parts

    def _driver(self, vm: _Res) -> Node:
        body = self._get_json(vm.id, {"api-version": COMPUTE_API, "$expand": "instanceView"})
        props = (body or {}).get("properties") or {}
        prov, power = _statuses(props.get("instanceView"))
        status = node_status(props.get("provisioningState") or vm.provisioning_state or prov, power)
        if body is None:
            status = "STOPPING" if vm.provisioning_state == "Deleting" else "LOST"
        ip = ""
        nics = (props.get("networkProfile") or {}).get("networkInterfaces") or []
        if nics and status in ("STARTING", "RUNNING"):
            ip = self._nic_ip(nics[0].get("id", ""))
        start = _ms(props.get("timeCreated")) or vm.created_ms
        attrs = _disk_attrs(props, str((props.get("hardwareProfile") or {}).get("vmSize") or ""))
        if ip:
            # Without the token: GET cluster adds it for the cluster's workspace
            # (shared/domain/spark_auth.py).
            attrs["connect_url"] = f"sc://{ip}:{CONNECT_PORT}"
        return Node(
            vm.name,
            "driver",
            status,
            start,
            private_ip=ip,
            instance_id=vm.name,
            attrs=attrs,
        )

    def _workers(self, vmss: _Res, seen: _Seen) -> list[Node]:
        vms = self._list_json(
            f"{vmss.id}/virtualMachines", {"api-version": COMPUTE_API, "$expand": "instanceView"}
        )
        deleting = (vmss.provisioning_state or "") == "Deleting"
        ips = self._vmss_ips(vmss.id) if vms else {}
        set_size = str((vmss.sku or {}).get("name") or "")
        out = []
        for v in vms:
            props = v.get("properties") or {}
            instance_id = str(v.get("instanceId") or v.get("name", "").rsplit("_", 1)[-1])
            prov, power = _statuses(props.get("instanceView"))
            status = node_status(props.get("provisioningState") or prov, power)
            if deleting:
                status = "STOPPING"
            name = str(v.get("name") or f"{vmss.name}_{instance_id}")
            seen.instances[name] = instance_id
            start = _ms(props.get("timeCreated")) or vmss.created_ms
            out.append(
                Node(
                    name,
                    "worker",
                    status,
                    start,
                    private_ip=ips.get(instance_id, ""),
                    instance_id=name,
                    attrs=_disk_attrs(props, str((v.get("sku") or {}).get("name") or set_size)),
                )
            )
        out.sort(key=lambda n: (n.start_ms, n.node_id))
        return out

    def _nic_ip(self, nic_id: str) -> str:
        if not nic_id:
            return ""
        try:
            nic = self.rm.resources.get_by_id(
                nic_id, api_version=self._api("Microsoft.Network/networkInterfaces")
            )
        except HttpResponseError:
            return ""
        return _first_ip((nic.properties or {}) if nic else {})

    def _vmss_ips(self, vmss_id: str) -> dict[str, str]:
        """instance id -> private IP, from the scale set's NIC listing (one request)."""
        try:
            nics = self._list_json(f"{vmss_id}/networkInterfaces", {"api-version": VMSS_NIC_API})
        except HttpResponseError:
            return {}
        out = {}
        for nic in nics:
            props = nic.get("properties") or {}
            vm_id = str((props.get("virtualMachine") or {}).get("id", ""))
            if vm_id:
                out[vm_id.rstrip("/").rsplit("/", 1)[-1]] = _first_ip(props)
        return out

    # ------------------------------------------------------------------------ ARM helpers

    def _deploy(self, group: str, name: str, template: Any, params: Mapping[str, Any]) -> None:
        body = Deployment(
            properties=DeploymentProperties(
                mode="Incremental",
                template=template,
                parameters={k: DeploymentParameter(value=v) for k, v in params.items()},
            ),
            tags={"Vendor": "sparkplane"},
        )
        try:
            self.dm.deployments.begin_create_or_update(group, name, body, polling=False)
        except HttpResponseError as e:
            # DeploymentActive: the same deployment is running already; it is observed.
            if e.status_code != 409:
                raise
            log.info("deployment %s/%s is active; not restarted", group, name)

    def _deploy_cluster(self, req: NodeRequest, group: str, workers: int) -> None:
        ws = self._workspace(req.workspace_id)
        tags = sanitize_tags(
            req.tags,
            {"ClusterId": req.cluster_id, "WorkspaceId": req.workspace_id, "Vendor": "sparkplane"},
        )
        params = {
            "clusterId": req.cluster_id,
            "location": ws.location,
            "driverVmSize": req.driver_node_type_id or req.node_type_id,
            "workerVmSize": req.node_type_id,
            "workerCount": workers,
            "subnetId": ws.subnet_id,
            "customData": self._custom_data(req, {"NODE_AGENT": "0"}),
            "tags": tags,
        }
        if self.admin_public_key:
            params["adminPublicKey"] = self.admin_public_key
        self._deploy(group, cluster_deployment(req.cluster_id), self._template("cluster"), params)
        with self._lock:
            seen = self._seen.get(req.cluster_id)
            if seen is None:
                seen = self._seen[req.cluster_id] = _Seen(group=group, at=self._clock())
            seen.deployment_state = "Accepted"

    def _worker_custom_data(self, req: NodeRequest, driver_ip: str) -> str:
        """The customData of the scale set's model for workers that run the node agent: the
        cluster's cloud-init with `req.agent_env` (control-plane URL, cluster id, agent token),
        NODE_AGENT=1 (the agent runs in node mode: disk reports only) and the two placeholders
        the cluster template fills for the deployment's copy (ROLE, DRIVER_HOST)."""
        return self._custom_data(
            req, {"NODE_AGENT": "1", "ROLE": "worker", "DRIVER_HOST": driver_ip}
        )

    def _custom_data(self, req: NodeRequest, extra: Mapping[str, str]) -> str:
        with self._lock:
            template = self._templates.get("cloud-init")
        if template is None:
            template = self.cloud_init.read_text()
            with self._lock:
                self._templates["cloud-init"] = template
        env = req.agent_env
        pyspark = SPARK_BUILDS.get(req.spark_version, ("", ""))[0]
        return custom_data(
            template,
            {
                "CLUSTER_ID": req.cluster_id,
                "CONTROL_PLANE_URL": self.control_plane_url
                or env.get("SPARKPLANE_CONTROL_PLANE_URL", ""),
                "AGENT_TOKEN": env.get("SPARKPLANE_AGENT_TOKEN", ""),
                "PYSPARK_VERSION": pyspark,
                "AGENT_SOURCE_URL": self.agent_source_url,
                "AGENT_SOURCE_SHA256": self.agent_source_sha256,
                "CONF_FILES": conf_files_value(req.conf_files),
                "SPARK_CONF": spark_conf_value(spark_auth.without_reserved(req.spark_conf)),
                # The cluster's Spark credentials (securestring parameter, root-only files).
                "SPARK_AUTH_SECRET": req.spark_auth_secret,
                "CONNECT_TOKEN": req.connect_token,
                "SPARK_ENV": spark_env_value(req.spark_env_vars),
                **extra,
            },
        )

    def _set_capacity(self, seen: _Seen, capacity: int, *, custom_data: str | None = None) -> None:
        """PATCHes the scale set's capacity and, when given, its model's customData (one
        operation: the instances it adds are made from the new model)."""
        assert seen.vmss is not None
        sku = seen.vmss.sku or {}
        model = {"virtualMachineProfile": {"osProfile": {"customData": custom_data}}}
        body = GenericResource(
            sku=Sku(name=sku.get("name"), tier=sku.get("tier"), capacity=capacity),
            properties=model if custom_data is not None else None,
        )
        try:
            self.rm.resources.begin_update_by_id(
                seen.vmss.id, body, api_version=COMPUTE_API, polling=False
            )
        except HttpResponseError as e:
            if e.status_code != 409:
                raise
            log.info("scale set busy; capacity is set by the next reconcile")
            return
        seen.capacity = capacity

    def _deployment_state(self, group: str, name: str) -> str | None:
        dep = self._get_deployment(group, name)
        return dep.properties.provisioning_state if dep and dep.properties else None

    def _get_deployment(self, group: str, name: str) -> Any:
        try:
            return self.dm.deployments.get(group, name)
        except ResourceNotFoundError:
            return None

    def _tagged(self, group: str, cluster_id: str) -> list[_Res]:
        try:
            return [
                _res(r)
                for r in self.rm.resources.list_by_resource_group(
                    group,
                    filter=f"tagName eq 'ClusterId' and tagValue eq '{_q(cluster_id)}'",
                    expand="provisioningState,createdTime",
                )
            ]
        except ResourceNotFoundError:
            return []  # the workspace's group is gone, and the cluster's resources with it

    def _locate(self, cluster_id: str) -> tuple[str | None, list[_Res] | None]:
        """The cluster's group and, when finding it needed a query, what the query listed."""
        with self._lock:
            group = self._groups.get(cluster_id)
        if group is not None:
            return group, None
        found: dict[str, list[_Res]] = {}
        for r in self.rm.resources.list(
            filter=f"tagName eq 'ClusterId' and tagValue eq '{_q(cluster_id)}'",
            expand="provisioningState,createdTime",
        ):
            g = _group_of(r.id or "")
            if g and self._ours(g):
                found.setdefault(g, []).append(_res(r))
        if found:
            group = next(iter(found))
            self._remember(cluster_id, group)
            return group, found[group]
        # Nothing tagged yet: a deployment that has only just started, made by another
        # instance of the app. Its group is the one that holds the cluster's deployment.
        name = cluster_deployment(cluster_id)
        for rg in self.rm.resource_groups.list(
            filter="tagName eq 'Vendor' and tagValue eq 'sparkplane'"
        ):
            if (
                rg.name
                and self._ours(rg.name)
                and self.dm.deployments.check_existence(rg.name, name)
            ):
                self._remember(cluster_id, rg.name)
                return rg.name, []
        return None, []

    def _remember(self, cluster_id: str, group: str) -> None:
        with self._lock:
            self._groups[cluster_id] = group

    def _recent(self, cluster_id: str) -> _Seen | None:
        with self._lock:
            seen = self._seen.get(cluster_id)
        if seen is not None and self._clock() - seen.at <= FRESH_S:
            return seen
        return None

    def _view(self, cluster_id: str) -> _Seen:
        """The observation add/remove_workers work from: the one the reconcile just made, or a
        new one."""
        seen = self._recent(cluster_id)
        if seen is None:
            self.observe(cluster_id)
            with self._lock:
                seen = self._seen[cluster_id]
        return seen

    def _api(self, resource_type: str) -> str:
        t = _type(resource_type)
        with self._lock:
            api = self._apis.get(t)
        if api is not None:
            return api
        namespace, _, rtype = t.partition("/")
        provider = self.rm.providers.get(namespace)
        for rt in provider.resource_types or []:
            if (rt.resource_type or "").lower() == rtype and rt.api_versions:
                stable = [v for v in rt.api_versions if "preview" not in v] or rt.api_versions
                api = sorted(stable)[-1]
                break
        if api is None:
            raise ValueError(f"no api-version known for {resource_type}")
        with self._lock:
            self._apis[t] = api
        return api

    def _send(self, method: str, url: str, params: Mapping[str, str], **kw: Any) -> Any:
        req = HttpRequest(method, url, params=dict(params), **kw)
        return self.rm.send_request(req)

    def _get_json(self, url: str, params: Mapping[str, str]) -> dict[str, Any] | None:
        resp = self._send("GET", url, params)
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.json()

    def _list_json(self, url: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        body = self._get_json(url, params)
        for _ in range(50):
            if body is None:
                break
            out.extend(body.get("value") or [])
            nxt = body.get("nextLink")
            if not nxt:
                break
            resp = self._send("GET", nxt, {})
            resp.raise_for_status()
            body = resp.json()
        return out

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def _q(value: str) -> str:
    """A value inside an OData string literal."""
    return value.replace("'", "''")


def _res(r: Any) -> _Res:
    sku = None
    if r.sku is not None:
        sku = {k: v for k, v in r.sku.as_dict().items() if v is not None}
    return _Res(
        id=r.id or "",
        name=r.name or "",
        type=(r.type or "").lower(),
        provisioning_state=r.provisioning_state,
        created_ms=_ms(r.created_time),
        sku=sku,
    )


def _first_ip(props: Mapping[str, Any]) -> str:
    for cfg in props.get("ipConfigurations") or []:
        ip = (cfg.get("properties") or {}).get("privateIPAddress")
        if ip:
            return str(ip)
    return ""
