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

| ARM says                                                     | node status                |
|--------------------------------------------------------------|----------------------------|
| cluster deployment Accepted/Running, no driver VM yet        | driver STARTING            |
| ... and no scale set yet                                     | its worker slots STARTING  |
| cluster deployment Failed and no driver VM                   | driver LOST (VM_FAILED)    |
| deployment over, driver VM but no scale set                  | driver LOST (VM_FAILED)    |
| VM / scale-set instance Creating, or not yet powered on      | STARTING                   |
| Succeeded (or Updating) and PowerState/running               | RUNNING once ready (below) |
| ... the driver, not ready READY_TIMEOUT_S after its creation | LOST (NOT_READY)           |
| Deleting (the VM, the scale set, or the instance)            | STOPPING                   |
| Failed, or stopped/deallocated                               | LOST (VM_FAILED)           |
| worker slots no instance is matched to yet                   | STARTING                   |
| no VM nor scale set, other ClusterId-tagged resources left   | one LOST ("leftovers")     |

Node ids (the port: known when start_driver/add_workers return, the node's for its life): the
driver's is its VM's name, which the template makes from the cluster id
(`sp-<lower-case cluster id>-driver`, `driver_vm_name`), so start_driver returns it at once. A
Uniform scale set names its instances itself (`<set>_<instance id>`, ids Azure assigns in no
promised order and may reuse), so add_workers hands out slots (`<cluster>-worker-<n>`), kept in
the cluster's worker book in the app's store (shared/adapters/arm/nodebook.py); observe()
matches each new instance (by name and creation time: Azure may reuse a deleted instance's id)
to the oldest pending slot (`book_match`) and reports the slot's id, the instance's name as
`instance_id`. add_workers may be called while the deployment still makes the scale set: the
slots are kept, and the first observe() that finds the set raises its capacity to what they
need (one write, as a resize); once the set exists add_workers raises it itself, and gives its
slots back when the PATCH is not sent. Capacity no slot asks for (the deployment's
`workerCount` when a cluster starts over its scale set, a change made outside the app) gets
slots when observe() sees it. Explicitly named VMs (flexible orchestration) would give ids
without a book, but cost a write per worker where a resize is one PATCH of the capacity,
against the subscription's 10 writes/s.

Readiness (RUNNING means ready, as with local Spark: docs/local-spark.md): ARM sees VMs, not
Spark. The driver's agent (started by the bootstrap) reports `ready` to the control plane when
Spark Connect answered a query, and again as executors register; the heartbeat handler hands
the report to `ready_reported` (ports.ReadyReports), which keeps it in the worker book's store,
and sends the cluster's reconcile. observe() reads it with the book (no ARM request): the driver
is RUNNING once its VM runs and it reported; a worker once its VM runs and an executor is
registered for it (the report's count, the oldest running workers first) or EXECUTOR_WAIT_S
after its VM was made. A LOST node carries `failure` and `failure_kind` in its attrs (VM_FAILED:
temporary, the region's capacity or an eviction; NOT_READY: permanent, the bootstrap or Spark
failed), which the planner makes a starting cluster's termination reason.

Start: `start_driver` deploys the template with the scale set's current capacity (0 for a new
cluster: the request carries no worker count); `add_workers` meanwhile hands out slots, whose
capacity observe() sets once the scale set exists, and after that sets it itself. A redeploy
is never used to resize or repair: the driver VM's customData cannot change after creation,
and each start issues a new agent token.

Agents: the driver always runs the cluster agent (Spark utilization and its disk). The
deployment's customData has NODE_AGENT=0, so its workers run none. When `add_workers` gets an
`agent_env` (the lifecycle passes one for clusters with autoscaling local storage), the capacity
PATCH also sets the scale set model's customData: the same cloud-init with that agent
environment, NODE_AGENT=1, ROLE=worker and DRIVER_HOST (the driver's IP, read by observe())
filled in. A scale set's customData can change, unlike a VM's; new instances boot with it and
the ones there keep theirs (the upgrade policy is Manual). Such a worker runs the agent in node
mode (disk reports only). Every node's agent names itself by what the instance metadata service
says (compute.name): the driver VM's name, its node id; `<scale set>_<instance id>` for a
worker, its `instance_id` (the services match a report by either).

Resize sets the scale set's `sku.capacity` with a PATCH through the generic resources API
rather than redeploying the cluster template: one resource-provider operation instead of a
deployment that re-evaluates the driver too, no `DeploymentActive` conflict while an earlier
deployment runs, and no deployment history per resize. Removing particular workers is the
scale set's `delete` action with their instance ids (through the client's pipeline with
`send_request`, as the generic API has no resource actions), which also lowers the capacity;
the scale set's terminate notification lets the worker decommission first. A worker that is
only a pending slot (no instance matched to it yet) goes with a capacity PATCH.

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

from shared.adapters.arm.base import WORKSPACE_DEPLOYMENT, WorkspaceNotReady, cluster_deployment
from shared.adapters.arm.customdata import (
    conf_files_value,
    custom_data,
    sanitize_tags,
    spark_conf_value,
    spark_env_value,
)
from shared.adapters.arm.disks import DataDiskLimitReached, new_data_disks
from shared.adapters.arm.provisioner import ArmProvisioner
from shared.adapters.arm.requests import API_VERSIONS, COMPUTE_API
from shared.adapters.arm.workers import POOLS_UNSUPPORTED
from shared.adapters.arm.workspaces import WorkspaceStatus
from shared.domain.azure_nodes import (
    DATA_DISK_LIMITS,
    DATA_DISK_SKU,
    NODE_TYPES,
    SPARK_BUILDS,
    SPARK_VERSIONS,
    TEMP_DISK_GIB,
    data_disk_bytes,
    local_storage_bytes,
    max_data_disks,
    node_status,
    temp_disk_bytes,
)

__all__ = [
    "API_VERSIONS",
    "COMPUTE_API",
    "DATA_DISK_LIMITS",
    "DATA_DISK_SKU",
    "NODE_TYPES",
    "POOLS_UNSUPPORTED",
    "SPARK_BUILDS",
    "SPARK_VERSIONS",
    "TEMP_DISK_GIB",
    "WORKSPACE_DEPLOYMENT",
    "ArmProvisioner",
    "DataDiskLimitReached",
    "WorkspaceNotReady",
    "WorkspaceStatus",
    "cluster_deployment",
    "conf_files_value",
    "custom_data",
    "data_disk_bytes",
    "local_storage_bytes",
    "max_data_disks",
    "new_data_disks",
    "node_status",
    "sanitize_tags",
    "spark_conf_value",
    "spark_env_value",
    "temp_disk_bytes",
]
