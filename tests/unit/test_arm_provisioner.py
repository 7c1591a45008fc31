"""The ARM provisioner through the real SDK clients, against a transport that answers like ARM.

`FakeArm` is an azure-core `HttpTransport` handed to both management clients
(`ResourceManagementClient`, `DeploymentsMgmtClient`): every request the SDK sends reaches it
(URL path, api-version, JSON body) and is recorded, and it answers the way ARM does: 201/200
with `Azure-AsyncOperation` on a deployment PUT, provisioningState Accepted -> Running ->
Succeeded as time passes (`tick()`) or as an operation is polled, 202 with `Location` on
deletes, 409 where ARM refuses (a deployment already running, a NIC still attached), and tag
filtered listings that, like ARM, leave the tags out. When a deployment succeeds it makes what
the template would make, so observe() has VMs and scale-set instances to read back. VMs and
instances carry a storage profile: a PATCH of a VM replaces its data disk list, a PUT of a
scale-set instance replaces its model's, new empty disks get a managed disk id, and the VM is
Updating (409 to a second update) until time passes. A scale set keeps its model's customData
(the deployment's, with ROLE and DRIVER_HOST filled as cluster.json does, or the one a PATCH
set) and each instance the one of the model it was made from; like ARM, no GET returns it.

The tests assert request by request what the provisioner sends for a workspace create, a
cluster create, a resize, a terminate and a workspace delete, and that no call waits on a long
running operation (no operation-status poll, no poller thread): the reconciles' observe()
calls see the progress. The driver agents' `ready` reports, which make a running VM a RUNNING
node, come from `FakeAgents`.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import runpy
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared import agent as agent_module
from shared.adapters.arm import (
    COMPUTE_API,
    DATA_DISK_LIMITS,
    DATA_DISK_SKU,
    NODE_TYPES,
    TEMP_DISK_GIB,
    ArmProvisioner,
    DataDiskLimitReached,
    WorkspaceNotReady,
    cluster_deployment,
    data_disk_bytes,
    max_data_disks,
    new_data_disks,
    node_status,
    sanitize_tags,
    temp_disk_bytes,
)
from shared.adapters.sqlite_store import SqliteStore
from shared.domain.node_env import (
    HARMLESS_PYTHON,
    PINNED_SPARK_ENV,
    PROGRAM_SPARK_ENV,
    PROGRAM_VALUE,
    REFUSED_NAMES,
    REFUSED_PATTERN,
    REFUSED_PREFIXES,
    RESERVED_SPARK_ENV_PREFIX,
    SPARK_ENV_NAME,
    spark_env_problem,
)
from shared.ports import NodeRequest, PoolRequest, ProvisionerUnsupported, Store
from shared.settings import Settings
from tests.fake_arm import BASE, SUB, FakeAgents, FakeArm, FakeCredential, Rec, _made

PLATFORM = f"/subscriptions/{SUB}/resourceGroups/platform/providers/Microsoft.Web/sites/sp"
RG_API = "2025-04-01"
DEP_API = "2026-06-01"


# --------------------------------------------------------------------------------------------
# Fixtures.

WORKSPACE_TEMPLATE = {
    "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
    "contentVersion": "1.0.0.0",
    "parameters": {"workspaceId": {"type": "string"}, "location": {"type": "string"}},
    "resources": [],
    "outputs": {},
}
CLUSTER_TEMPLATE = {
    "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
    "contentVersion": "1.0.0.0",
    "parameters": {
        "clusterId": {"type": "string"},
        "location": {"type": "string"},
        "driverVmSize": {"type": "string"},
        "workerVmSize": {"type": "string"},
        "workerCount": {"type": "int"},
        "subnetId": {"type": "string"},
        "customData": {"type": "securestring"},
        "tags": {"type": "object"},
    },
    "resources": [],
}
CID = "0101-120000-abcd1234"
RGN = "sparkplane-ws1-managed"
RG_PATH = f"/subscriptions/{SUB}/resourcegroups/{RGN}"
DEP_PATH = f"{RG_PATH}/providers/Microsoft.Resources/deployments"
RG_ID = f"/subscriptions/{SUB}/resourceGroups/{RGN}/providers"
VM_ID = f"{RG_ID}/Microsoft.Compute/virtualMachines/sp-{CID}-driver"
NIC_ID = f"{RG_ID}/Microsoft.Network/networkInterfaces/sp-{CID}-driver-nic"
DISK_ID = f"{RG_ID}/Microsoft.Compute/disks/sp-{CID}-driver-osdisk"
VMSS_ID = f"{RG_ID}/Microsoft.Compute/virtualMachineScaleSets/sp-{CID}-workers"
W = f"sp-{CID}-workers"  # worker instance names: <scale set>_<instance id>
DRIVER = f"sp-{CID}-driver"  # the driver's node id: its VM's name
CLOUD_INIT = """#cloud-config
write_files:
  - path: /etc/sparkplane/node.env
    content: |
      SPARKPLANE_ROLE=__SPARKPLANE_ROLE__
      SPARKPLANE_DRIVER_HOST=__SPARKPLANE_DRIVER_HOST__
      SPARKPLANE_CLUSTER_ID=__SPARKPLANE_CLUSTER_ID__
      SPARKPLANE_PYSPARK_VERSION=__SPARKPLANE_PYSPARK_VERSION__
      SPARKPLANE_AGENT_SOURCE_URL=__SPARKPLANE_AGENT_SOURCE_URL__
  - path: /etc/sparkplane/agent.env
    content: |
      SPARKPLANE_CONTROL_PLANE_URL=__SPARKPLANE_CONTROL_PLANE_URL__
      SPARKPLANE_AGENT_TOKEN=__SPARKPLANE_AGENT_TOKEN__
"""
AGENT_ENV = {
    "SPARKPLANE_CONTROL_PLANE_URL": "https://sp.azurewebsites.net",
    "SPARKPLANE_CLUSTER_ID": CID,
    "SPARKPLANE_AGENT_TOKEN": "dapi0123456789abcdef",
    "SPARKPLANE_HEARTBEAT_S": "10.0",
}


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    d = tmp_path / "templates"
    d.mkdir()
    (d / "workspace.json").write_text(json.dumps(WORKSPACE_TEMPLATE))
    (d / "cluster.json").write_text(json.dumps(CLUSTER_TEMPLATE))
    (d / "cloud-init.yaml").write_text(CLOUD_INIT)
    return d


def make(
    arm: FakeArm, templates: Path, store: Store | None = None, **settings: Any
) -> ArmProvisioner:
    settings.setdefault("arm_cloud_init", str(templates / "cloud-init.yaml"))
    s = Settings(
        arm_subscription_id=SUB,
        arm_endpoint=BASE,
        arm_platform_resource_id=PLATFORM,
        arm_templates_dir=str(templates),
        **settings,
    )
    return ArmProvisioner.from_settings(s, credential=FakeCredential(), transport=arm, store=store)


@pytest.fixture
def arm() -> FakeArm:
    return FakeArm()


@pytest.fixture
def prov(arm: FakeArm, templates: Path) -> ArmProvisioner:
    return make(arm, templates)


def request_for(cid: str = CID, **kw: Any) -> NodeRequest:
    base: dict[str, Any] = {
        "cluster_id": cid,
        "workspace_id": "ws1",
        "node_type_id": "Standard_D4ds_v5",
        "driver_node_type_id": "Standard_D8ds_v5",
        "spark_version": "4.1.x-scala2.13",
        "spark_conf": {"spark.sql.shuffle.partitions": "8"},
        "tags": {"team": "data", "ClusterId": cid, "Vendor": "sparkplane"},
        "agent_env": AGENT_ENV,
        # What the lifecycle always gives with the ARM provisioner (the key is required).
        "spark_auth_secret": "a" * 64,
        "connect_token": "b" * 64,
    }
    base.update(kw)
    return NodeRequest(**base)


def ready_workspace(arm: FakeArm, prov: ArmProvisioner) -> None:
    prov.create_workspace("ws1", "westeurope")
    arm.tick(2)
    arm.take()


def no_polling(recs: list[Rec]) -> None:
    """No request of a provisioner call is a long-running operation's poll."""
    assert not [r for r in recs if "operationStatuses" in r.path or "operationResults" in r.path]
    assert not [t for t in threading.enumerate() if t.name.startswith("LROPoller")]


def shape(recs: list[Rec]) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in recs]


@pytest.fixture(autouse=True)
def _no_poller_threads() -> Iterator[None]:
    yield
    assert not [t for t in threading.enumerate() if t.name.startswith("LROPoller")]


# --------------------------------------------------------------------------------------------
# The fake answers like ARM (checked once through the SDK's own poller).


def test_the_fake_answers_long_running_operations_like_arm(arm: FakeArm, templates: Path) -> None:
    prov = make(arm, templates)
    prov.rm.resource_groups.create_or_update("g1", {"location": "westeurope"})
    poller = prov.dm.deployments.begin_create_or_update(
        "g1",
        "d1",
        {"properties": {"mode": "Incremental", "template": {}, "parameters": {}}},
        polling_interval=0,
    )
    result = poller.result()
    assert result.properties.provisioning_state == "Succeeded"
    recs = arm.take()
    states = [r for r in recs if "operationStatuses" in r.path]
    assert recs[1].method == "PUT" and len(states) == 2  # Accepted -> Running -> Succeeded
    prov.rm.resource_groups.begin_delete("g1", polling_interval=0).result()
    assert "g1" not in arm.groups
    assert [r.method for r in arm.take()][:1] == ["DELETE"]


# --------------------------------------------------------------------------------------------
# Workspaces.


def test_create_workspace_puts_the_managed_group_then_starts_its_deployment(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    prov.create_workspace("ws1", "northeurope")
    recs = arm.take()
    assert shape(recs) == [("PUT", RG_PATH), ("PUT", f"{DEP_PATH}/sparkplane-workspace")]
    group, dep = recs
    assert group.api_version == RG_API
    assert group.body == {
        "location": "northeurope",
        "managedBy": PLATFORM,
        "tags": {"Vendor": "sparkplane", "WorkspaceId": "ws1"},
    }
    assert dep.api_version == DEP_API
    assert dep.body["properties"]["mode"] == "Incremental"
    assert dep.body["properties"]["template"] == WORKSPACE_TEMPLATE
    assert dep.body["properties"]["parameters"] == {
        "workspaceId": {"value": "ws1"},
        "location": {"value": "northeurope"},
    }
    no_polling(recs)

    assert prov.workspace_status("ws1") == "PROVISIONING"
    arm.tick()
    assert prov.workspace_status("ws1") == "PROVISIONING"  # Running
    arm.tick()
    assert prov.workspace_status("ws1") == "READY"
    assert prov.workspace_status("nope") == "NOT_FOUND"


def test_creating_a_workspace_again_while_it_deploys_is_harmless(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    prov.create_workspace("ws1", "westeurope")
    prov.create_workspace("ws1", "westeurope")  # 409 DeploymentActive is swallowed
    assert arm.deployments[(RGN, "sparkplane-workspace")]["state"] == "Accepted"


def test_delete_workspace_deletes_the_group_without_waiting(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    ready_workspace(arm, prov)
    prov.delete_workspace("ws1")
    recs = arm.take()
    assert shape(recs) == [("DELETE", RG_PATH)]
    assert recs[0].query == {
        "forceDeletionTypes": (
            "Microsoft.Compute/virtualMachines,Microsoft.Compute/virtualMachineScaleSets"
        )
    }
    no_polling(recs)
    assert prov.workspace_status("ws1") == "DELETING"
    arm.tick()
    assert prov.workspace_status("ws1") == "NOT_FOUND"
    prov.delete_workspace("ws1")  # gone already: nothing to do


# --------------------------------------------------------------------------------------------
# Clusters: the whole sequence, request by request.


def test_create_resize_terminate_request_by_request(arm: FakeArm, prov: ArmProvisioner) -> None:
    ready_workspace(arm, prov)
    req = request_for()
    # add_workers as the lifecycle calls it for a cluster without autoscaling local storage:
    # no agent environment (the workers run no agent).
    wreq = request_for(agent_env={})

    # ---- first reconcile of a new cluster: nothing anywhere yet
    assert prov.observe(CID) == []
    recs = arm.take()
    # One tag query; the managed groups are not probed for its deployment (a read each).
    assert shape(recs) == [("GET", f"/subscriptions/{SUB}/resources")]
    assert recs[0].query["$filter"] == f"tagName eq 'ClusterId' and tagValue eq '{CID}'"

    # ---- create: start_driver deploys the cluster template; the driver's id (its VM's name,
    # made from the cluster id) is final at once
    driver = prov.start_driver(req)
    assert (driver.node_id, driver.role, driver.status) == (DRIVER, "driver", "STARTING")
    recs = arm.take()
    assert shape(recs) == [
        ("GET", RG_PATH),
        ("GET", f"{DEP_PATH}/sparkplane-workspace"),
        ("PUT", f"{DEP_PATH}/{cluster_deployment(CID)}"),
    ]
    put = recs[-1]
    assert put.api_version == DEP_API
    assert put.body["properties"]["template"] == CLUSTER_TEMPLATE
    params = {k: v["value"] for k, v in put.body["properties"]["parameters"].items()}
    subnet = f"{RG_ID}/Microsoft.Network/virtualNetworks/workers-vnet/subnets/workers"
    assert {k: v for k, v in params.items() if k != "customData"} == {
        "clusterId": CID,
        "location": "westeurope",
        "driverVmSize": "Standard_D8ds_v5",
        "workerVmSize": "Standard_D4ds_v5",
        "workerCount": 0,
        "subnetId": subnet,
        "tags": {"ClusterId": CID, "WorkspaceId": "ws1", "Vendor": "sparkplane", "team": "data"},
    }
    cloud = base64.b64decode(params["customData"]).decode()
    assert cloud == (
        CLOUD_INIT.replace("__SPARKPLANE_CLUSTER_ID__", CID)
        .replace("__SPARKPLANE_PYSPARK_VERSION__", "4.1.4")
        .replace("__SPARKPLANE_CONTROL_PLANE_URL__", "https://sp.azurewebsites.net")
        .replace("__SPARKPLANE_AGENT_TOKEN__", "dapi0123456789abcdef")
    )  # ROLE and DRIVER_HOST are the template's; no agent source configured: left unfilled
    no_polling(recs)

    # add_workers while the deployment makes the scale set: slots (their ids final), nothing
    # sent yet
    early = prov.add_workers(wreq, 2)
    w0, w1 = f"{CID}-worker-0", f"{CID}-worker-1"
    assert [(n.node_id, n.role, n.status) for n in early] == [
        (w0, "worker", "STARTING"),
        (w1, "worker", "STARTING"),
    ]
    assert arm.take() == []

    # ---- the deployment runs: the driver and the slots on their way
    arm.tick()
    nodes = prov.observe(CID)
    assert [(n.node_id, n.status) for n in nodes] == [
        (DRIVER, "STARTING"),
        (w0, "STARTING"),
        (w1, "STARTING"),
    ]
    # While a new cluster's deployment runs, only the deployment is read.
    assert shape(arm.take()) == [("GET", f"{DEP_PATH}/{cluster_deployment(CID)}")]
    # A second start while it runs (a replayed reconcile) is refused by ARM and ignored.
    prov.start_driver(req)
    assert shape(arm.take()) == [("PUT", f"{DEP_PATH}/{cluster_deployment(CID)}")]

    # ---- the deployment succeeded: the driver VM runs, but its agent has not reported ready,
    # so it is STARTING; the scale set, made empty, gets the capacity the two slots need
    arm.tick()
    nodes = prov.observe(CID)
    assert [(n.node_id, n.role, n.status, n.private_ip) for n in nodes] == [
        (DRIVER, "driver", "STARTING", "10.0.0.4"),
        (w0, "worker", "STARTING", "127.0.0.1"),
        (w1, "worker", "STARTING", "127.0.0.1"),
    ]
    recs = arm.take()
    assert shape(recs) == [
        ("GET", f"{DEP_PATH}/{cluster_deployment(CID)}"),
        ("GET", f"{RG_PATH}/resources"),
        ("GET", VM_ID),
        ("GET", NIC_ID),
        ("GET", f"{VMSS_ID}/virtualMachines"),
        ("PATCH", VMSS_ID),
    ]
    assert recs[1].query == {
        "$filter": f"tagName eq 'ClusterId' and tagValue eq '{CID}'",
        "$expand": "provisioningState,createdTime",
    }
    assert recs[2].query == {"$expand": "instanceView"} and recs[2].api_version == COMPUTE_API
    assert recs[5].api_version == COMPUTE_API
    assert recs[5].body == {"sku": {"name": "Standard_D4ds_v5", "tier": "Standard", "capacity": 2}}
    no_polling(recs)

    # ---- the driver's agent reports ready (Spark Connect answered; no executor yet): the
    # driver is RUNNING, the workers still start
    agents = FakeAgents(arm)
    agents.report(prov)
    nodes = prov.observe(CID)
    assert [(n.node_id, n.status) for n in nodes] == [
        (DRIVER, "RUNNING"),
        (w0, "STARTING"),
        (w1, "STARTING"),
    ]
    arm.take()
    arm.tick()
    # Their VMs run, but no executor has registered: still STARTING.
    nodes = prov.observe(CID)
    assert [n.status for n in nodes if n.role == "worker"] == ["STARTING"] * 2
    agents.report(prov)  # two executors
    nodes = prov.observe(CID)
    workers = [n for n in nodes if n.role == "worker"]
    # The slots' ids stay; the instances are their instance_id.
    assert [(n.node_id, n.instance_id, n.status, n.private_ip) for n in workers] == [
        (w0, f"{W}_0", "RUNNING", "10.0.1.0"),
        (w1, f"{W}_1", "RUNNING", "10.0.1.1"),
    ]
    # How the driver's agent names a worker in its samples (the autoscaler's removal hints).
    assert workers[0].attrs["worker_ui_url"] == "http://10.0.1.0:8081/"
    assert shape(arm.take())[-1] == ("GET", f"{VMSS_ID}/networkInterfaces")

    # ---- resize up: one PATCH of the scale set's capacity (3)
    (added,) = prov.add_workers(wreq, 1)
    w2 = f"{CID}-worker-2"
    assert (added.node_id, added.role, added.status) == (w2, "worker", "STARTING")
    recs = arm.take()
    assert shape(recs) == [("PATCH", VMSS_ID)]
    assert recs[0].body == {"sku": {"name": "Standard_D4ds_v5", "tier": "Standard", "capacity": 3}}
    no_polling(recs)
    arm.tick()
    agents.report(prov)
    prov.observe(CID)
    arm.take()

    # ---- resize down: the chosen worker's instance is deleted from the set (capacity follows)
    prov.remove_workers(CID, [w1])
    recs = arm.take()
    assert shape(recs) == [("POST", f"{VMSS_ID}/delete")]
    assert recs[0].api_version == COMPUTE_API
    assert recs[0].body == {"instanceIds": ["1"]}
    no_polling(recs)
    nodes = prov.observe(CID)
    arm.take()
    assert {n.node_id: n.status for n in nodes if n.role == "worker"} == {
        w0: "RUNNING",
        w1: "STOPPING",
        w2: "RUNNING",
    }
    assert arm.find("virtualMachineScaleSets")[0]["sku"]["capacity"] == 2

    # ---- terminate: compute first, and the deployment record
    prov.stop_cluster(CID)
    recs = arm.take()
    assert shape(recs) == [
        ("GET", f"{DEP_PATH}/{cluster_deployment(CID)}"),
        ("GET", f"{RG_PATH}/resources"),
        ("DELETE", VM_ID),
        ("DELETE", VMSS_ID),
        ("DELETE", f"{DEP_PATH}/{cluster_deployment(CID)}"),
    ]
    assert {r.api_version for r in recs[2:4]} == {COMPUTE_API}
    assert recs[4].api_version == DEP_API
    no_polling(recs)
    nodes = prov.observe(CID)
    arm.take()
    assert nodes and {n.status for n in nodes} == {"STOPPING"}

    # ---- ARM finishes: nothing of the cluster is left (NIC and disk went with the VM)
    arm.tick()
    assert prov.observe(CID) == []
    assert not [r for r in arm.resources.values() if r["tags"].get("ClusterId") == CID]
    assert (RGN, cluster_deployment(CID)) not in arm.deployments
    arm.take()

    # ---- the workspace goes, with its group
    prov.delete_workspace("ws1")
    assert shape(arm.take()) == [("DELETE", RG_PATH)]


def test_what_a_vm_leaves_behind_is_deleted_once_the_vm_is_gone(templates: Path) -> None:
    arm = FakeArm(delete_with_vm=False)  # a template without deleteOption Delete
    prov = make(arm, templates)
    ready_workspace(arm, prov)
    prov.start_driver(request_for())
    arm.tick(2)
    prov.observe(CID)
    arm.take()
    prov.stop_cluster(CID)
    # The NIC and disk are attached: only the compute is deleted in this pass.
    assert [r.path for r in arm.take() if r.method == "DELETE"][:2] == [VM_ID, VMSS_ID]
    arm.tick()
    nodes = prov.observe(CID)
    assert [(n.node_id, n.status) for n in nodes] == [(f"{CID}-leftovers", "LOST")]
    arm.take()
    prov.stop_cluster(CID)
    assert sorted(r.path for r in arm.take() if r.method == "DELETE") == [DISK_ID, NIC_ID]
    assert [n.status for n in prov.observe(CID)] == ["STOPPING"]
    arm.tick()
    assert prov.observe(CID) == []


def test_a_cluster_whose_scale_set_is_gone_reports_its_driver_lost(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    ready_workspace(arm, prov)
    req = request_for()
    prov.start_driver(req)
    arm.tick(2)
    del arm.resources[VMSS_ID.lower()]  # deleted behind our back
    assert [(n.role, n.status) for n in prov.observe(CID)] == [("driver", "LOST")]
    arm.take()
    # No redeploy (the driver's customData could not change): the cluster is torn down.
    assert prov.add_workers(req, 2) == []
    assert arm.take() == []


def test_stopping_a_cluster_whose_deployment_runs_cancels_it(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    ready_workspace(arm, prov)
    prov.start_driver(request_for())
    arm.tick()
    arm.take()
    prov.stop_cluster(CID)
    recs = arm.take()
    assert shape(recs) == [
        ("GET", f"{DEP_PATH}/{cluster_deployment(CID)}"),
        ("POST", f"{DEP_PATH}/{cluster_deployment(CID)}/cancel"),
        ("GET", f"{RG_PATH}/resources"),
        ("DELETE", f"{DEP_PATH}/{cluster_deployment(CID)}"),
    ]
    assert arm.deployments[(RGN, cluster_deployment(CID))]["state"] == "Deleting"
    arm.tick()
    assert prov.observe(CID) == []


def test_a_failed_deployment_is_a_lost_driver_until_stopped(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    ready_workspace(arm, prov)
    arm.fail_cluster_deployments = True
    prov.start_driver(request_for())
    arm.tick(2)
    assert [(n.role, n.status) for n in prov.observe(CID)] == [("driver", "LOST")]
    prov.stop_cluster(CID)
    arm.tick()
    assert prov.observe(CID) == []


def test_a_fresh_instance_finds_the_cluster_by_its_tags(
    arm: FakeArm, templates: Path, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "store.db")  # the app's store, shared by its instances
    prov = make(arm, templates, store=store)
    ready_workspace(arm, prov)
    req = request_for()
    prov.start_driver(req)
    arm.tick(2)
    prov.observe(CID)
    (worker,) = prov.add_workers(req, 1)
    arm.tick()
    FakeAgents(arm).report(prov)

    other = make(arm, templates, store=store)  # another instance of the app: nothing cached
    arm.take()
    nodes = other.observe(CID)
    # The same ids, and the readiness the first instance was told of.
    assert [(n.node_id, n.status) for n in nodes] == [
        (DRIVER, "RUNNING"),
        (worker.node_id, "RUNNING"),
    ]
    recs = arm.take()
    assert shape(recs)[:2] == [
        ("GET", f"/subscriptions/{SUB}/resources"),
        ("GET", f"{DEP_PATH}/{cluster_deployment(CID)}"),
    ]
    assert ("GET", f"{RG_PATH}/resources") not in shape(recs)  # the lookup listed them
    # And it can act on what it found.
    other.remove_workers(CID, [worker.node_id])
    recs = arm.take()
    assert shape(recs) == [("POST", f"{VMSS_ID}/delete")]
    assert recs[0].body == {"instanceIds": ["0"]}


def test_a_pending_worker_slot_is_removed_by_lowering_the_capacity(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    ready_workspace(arm, prov)
    req = request_for()
    prov.start_driver(req)
    arm.tick(2)
    prov.observe(CID)
    w0, w1, w2 = (n.node_id for n in prov.add_workers(req, 3))
    # The scale set has taken capacity 3 but lists two instances (the third not yet listed).
    vmss = arm.find("virtualMachineScaleSets")[0]
    del vmss["instances"]["2"]
    nodes = prov.observe(CID)
    workers = [n for n in nodes if n.role == "worker"]
    assert [(n.node_id, n.instance_id) for n in workers] == [
        (w0, f"{W}_0"),
        (w1, f"{W}_1"),
        (w2, ""),  # still a slot
    ]
    arm.take()
    prov.remove_workers(CID, [w2, w1])
    recs = arm.take()
    # The pending slot alone, by capacity; the instance waits for the next reconcile.
    assert shape(recs) == [("PATCH", VMSS_ID)]
    assert recs[0].body["sku"]["capacity"] == 2


def test_a_cluster_in_a_workspace_that_is_not_deployed_is_refused(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    prov.create_workspace("ws1", "westeurope")
    with pytest.raises(WorkspaceNotReady):
        prov.start_driver(request_for())
    with pytest.raises(WorkspaceNotReady):
        prov.start_driver(request_for(workspace_id="nowhere"))


def test_without_a_subnet_output_the_workspace_vnet_is_read(templates: Path) -> None:
    arm = FakeArm(workspace_outputs=False)
    prov = make(arm, templates)
    ready_workspace(arm, prov)
    prov.start_driver(request_for())
    recs = arm.take()
    assert shape(recs)[2:4] == [
        ("GET", f"{RG_PATH}/resources"),
        ("GET", f"{RG_ID}/Microsoft.Network/virtualNetworks/workers-vnet"),
    ]
    params = recs[-1].body["properties"]["parameters"]
    assert params["subnetId"]["value"].endswith("/virtualNetworks/workers-vnet/subnets/workers")


def test_cluster_ids_are_the_tagged_clusters_of_managed_groups_only(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    ready_workspace(arm, prov)
    prov.start_driver(request_for())
    arm.tick(2)
    # A ClusterId-tagged VM elsewhere (say, a real Databricks workspace) is not ours.
    arm.groups["databricks-rg-x"] = {
        "id": f"/subscriptions/{SUB}/resourceGroups/databricks-rg-x",
        "name": "databricks-rg-x",
        "location": "westeurope",
        "tags": {},
        "properties": {"provisioningState": "Succeeded"},
    }
    arm._put_res(
        f"/subscriptions/{SUB}/resourceGroups/databricks-rg-x/providers/"
        "Microsoft.Compute/virtualMachines/other",
        "westeurope",
        {"ClusterId": "0000-000000-other"},
    )
    arm.take()
    assert prov.cluster_ids() == {CID}
    [rec] = arm.take()
    assert (rec.path, rec.query) == (
        f"/subscriptions/{SUB}/resources",
        {"$filter": "tagName eq 'ClusterId'"},
    )


def test_every_request_carries_the_token(arm: FakeArm, templates: Path) -> None:
    cred = FakeCredential()
    s = Settings(arm_subscription_id=SUB, arm_endpoint=BASE, arm_templates_dir=str(templates))
    prov = ArmProvisioner.from_settings(s, credential=cred, transport=arm)
    prov.workspace_status("ws1")
    assert cred.calls >= 1


# --------------------------------------------------------------------------------------------
# Pure parts.


@pytest.mark.parametrize(
    ("prov_state", "power", "status"),
    [
        ("Creating", "starting", "STARTING"),
        ("Creating", None, "STARTING"),
        ("Succeeded", "running", "RUNNING"),
        ("Updating", "running", "RUNNING"),
        ("Succeeded", "starting", "STARTING"),
        ("Deleting", "running", "STOPPING"),
        ("Failed", "running", "LOST"),
        ("Succeeded", "deallocated", "LOST"),
        ("Succeeded", "stopped", "LOST"),
    ],
)
def test_node_status_from_arm_states(prov_state: str, power: str | None, status: str) -> None:
    assert node_status(prov_state, power) == status


def test_tags_are_made_acceptable_to_azure() -> None:
    user = {"ok": "v" * 300, "bad/name": "x", "ClusterId": "spoof"}
    user.update({f"t{i}": "" for i in range(60)})
    tags = sanitize_tags(user, {"ClusterId": "c1", "Vendor": "sparkplane"})
    assert tags["ClusterId"] == "c1" and "bad/name" not in tags
    assert len(tags["ok"]) == 256 and len(tags) == 50


def test_catalog() -> None:
    prov = ArmProvisioner(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        subscription_id=SUB,
        templates_dir=Path("."),
    )
    types = {t.node_type_id: t for t in prov.node_types()}
    assert (types["Standard_D4ds_v5"].num_cores, types["Standard_D4ds_v5"].memory_mb) == (4, 16384)
    keys = [v.key for v in prov.spark_versions()]
    assert "4.1.x-scala2.13" in keys and any(k.endswith("-scala2.12") for k in keys)


def test_settings_without_a_subscription_say_what_is_missing() -> None:
    with pytest.raises(ValueError, match="SUBSCRIPTION_ID"):
        ArmProvisioner.from_settings(Settings(), credential=FakeCredential())


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("workspace", {"workspaceId", "location"}),
        (
            "cluster",
            {
                "clusterId",
                "location",
                "driverVmSize",
                "workerVmSize",
                "workerCount",
                "subnetId",
                "customData",
                "tags",
            },
        ),
    ],
)
def test_the_repository_templates_take_the_parameters_the_provisioner_sends(
    name: str, params: set[str]
) -> None:
    path = ROOT / "infra" / "templates" / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{path} is not written yet")
    declared = json.loads(path.read_text()).get("parameters", {})
    required = {k for k, v in declared.items() if "defaultValue" not in v}
    assert required <= params, f"{name}.json needs parameters the provisioner does not send"
    assert params <= set(declared), f"{name}.json lacks parameters the provisioner sends"


def test_a_placeholder_value_that_could_break_the_node_env_file_is_refused(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    ready_workspace(arm, prov)
    env = {**AGENT_ENV, "SPARKPLANE_CONTROL_PLANE_URL": "https://x/?a=1&touch /tmp/p"}
    with pytest.raises(ValueError, match="CONTROL_PLANE_URL"):
        prov.start_driver(request_for(agent_env=env))
    assert [r for r in arm.take() if r.method == "PUT"] == []


def test_the_repository_cloud_init_is_filled_but_for_the_templates_own_placeholders(
    arm: FakeArm, templates: Path
) -> None:
    path = ROOT / "infra" / "bootstrap" / "cloud-init.yaml"
    if not path.exists():
        pytest.skip(f"{path} is not written yet")
    prov = make(
        arm,
        templates,
        arm_cloud_init=str(path),
        arm_agent_source_url="https://example.org/sparkplane.tar.gz",
        arm_agent_source_sha256="ab" * 32,
    )
    ready_workspace(arm, prov)
    prov.start_driver(request_for())
    put = arm.take()[-1]
    text = base64.b64decode(put.body["properties"]["parameters"]["customData"]["value"]).decode()
    assert set(re.findall(r"__SPARKPLANE_[A-Z0-9_]+__", text)) == {
        "__SPARKPLANE_ROLE__",
        "__SPARKPLANE_DRIVER_HOST__",
    }
    assert f"SPARKPLANE_CLUSTER_ID={CID}" in text
    assert "SPARKPLANE_AGENT_TOKEN=dapi0123456789abcdef" in text


# --------------------------------------------------------------------------------------------
# The provisioner under the real lifecycle: admin create, cluster create, resize, terminate.


def test_the_lifecycle_drives_a_cluster_through_arm(tmp_path: Path, templates: Path) -> None:
    from shared.adapters.embedded_bus import EmbeddedBus
    from shared.adapters.sqlite_store import SqliteStore
    from shared.domain.states import State
    from shared.services.auth import Principal
    from shared.wiring import Container, SystemClock

    arm = FakeArm()
    store = SqliteStore(tmp_path / "store.db")
    prov = make(arm, templates, store=store)
    c = Container(
        settings=Settings(data_dir=tmp_path / "data", agent_callback_url=BASE),
        store=store,
        bus=EmbeddedBus(tmp_path / "bus.db"),
        provisioner=prov,
        clock=SystemClock(),
    )
    agents = FakeAgents(arm)
    c.admin.create_workspace({"name": "one", "workspace_id": "ws1", "region": "westeurope"})
    assert c.admin.get_workspace("ws1")["provisioning_state"] == "PROVISIONING"
    arm.tick(2)
    assert c.admin.get_workspace("ws1")["provisioning_state"] == "READY"

    p = Principal("ws1", "admin", "t")
    cid = c.clusters.create(
        p,
        {
            "cluster_name": "c",
            "spark_version": "4.1.x-scala2.13",
            "node_type_id": "Standard_D4ds_v5",
            "num_workers": 2,
        },
    )

    def converge(state: State, rounds: int = 8) -> None:
        for _ in range(rounds):
            c.lifecycle.reconcile("ws1", cid)
            got = c.repo.load("ws1", cid)
            assert got is not None
            if got[0].state == state:
                return
            arm.tick()
            agents.heartbeat(c.utilization)
        raise AssertionError(f"not {state} after {rounds} rounds: {got[0].state}")

    converge(State.RUNNING)
    cluster = c.repo.load("ws1", cid)[0]  # type: ignore[index]
    assert cluster.driver is not None and cluster.driver["private_ip"] == "10.0.0.4"
    assert len(cluster.executors) == 2

    c.clusters.resize(p, {"cluster_id": cid, "num_workers": 3})
    converge(State.RUNNING)
    c.clusters.resize(p, {"cluster_id": cid, "num_workers": 1})
    converge(State.RUNNING)
    assert len(c.repo.load("ws1", cid)[0].executors) == 1  # type: ignore[index]
    c.clusters.delete(p, {"cluster_id": cid})
    converge(State.TERMINATED)

    writes = [r for r in arm.requests if r.method not in ("GET", "HEAD")]
    assert [(r.method, r.path) for r in writes] == [
        ("PUT", RG_PATH),
        ("PUT", f"{DEP_PATH}/sparkplane-workspace"),
        ("PUT", f"{DEP_PATH}/{cluster_deployment(cid)}"),
        ("PATCH", VMSS_ID.replace(CID, cid)),
        ("PATCH", VMSS_ID.replace(CID, cid)),
        ("POST", f"{VMSS_ID.replace(CID, cid)}/delete"),
        ("DELETE", VM_ID.replace(CID, cid)),
        ("DELETE", VMSS_ID.replace(CID, cid)),
        ("DELETE", f"{DEP_PATH}/{cluster_deployment(cid)}"),
    ]
    put = writes[2].body["properties"]["parameters"]
    assert put["workerCount"]["value"] == 0
    cloud = base64.b64decode(put["customData"]["value"]).decode()
    token = re.search(r"SPARKPLANE_AGENT_TOKEN=(\S+)", cloud)
    assert token and token.group(1).startswith("dapi")
    assert f"SPARKPLANE_CONTROL_PLANE_URL={BASE}" in cloud  # agent_callback_url
    assert [r.body["sku"]["capacity"] for r in writes[3:5]] == [2, 3]
    assert writes[5].body == {"instanceIds": ["2", "1"]}  # the newest two go
    no_polling(arm.requests)


def test_a_configured_control_plane_url_wins_over_the_agent_environment(
    arm: FakeArm, templates: Path
) -> None:
    prov = make(arm, templates, arm_control_plane_url="https://sp.example.net")
    ready_workspace(arm, prov)
    prov.start_driver(request_for())
    put = arm.take()[-1]
    text = base64.b64decode(put.body["properties"]["parameters"]["customData"]["value"]).decode()
    assert "SPARKPLANE_CONTROL_PLANE_URL=https://sp.example.net\n" in text


# --------------------------------------------------------------------------------------------
# Local storage: managed data disks attached to a node's VM.

GIB = 1 << 30
INSTANCE_1 = f"{VMSS_ID}/virtualMachines/1"
# The temporary disks of request_for()'s sizes (part of a node's local storage): the workers'
# Standard_D4ds_v5 and the driver's Standard_D8ds_v5.
W_TEMP = 150 * GIB
D_TEMP = 300 * GIB


def running_cluster(arm: FakeArm, prov: ArmProvisioner, workers: int = 2) -> None:
    ready_workspace(arm, prov)
    prov.start_driver(request_for())
    arm.tick(2)
    prov.observe(CID)
    prov.add_workers(request_for(agent_env={}), workers)  # workers without the node agent
    arm.tick()
    FakeAgents(arm).report(prov)  # Spark is ready, with an executor on each worker
    prov.observe(CID)
    arm.take()


def new_disk(lun: int, gib: int, **extra: Any) -> dict[str, Any]:
    return {
        "lun": lun,
        "createOption": "Empty",
        "diskSizeGB": gib,
        "caching": "None",
        "managedDisk": {"storageAccountType": "StandardSSD_LRS"},
        **extra,
    }


def test_growing_a_worker_puts_its_scale_set_instance_with_a_new_disk(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    running_cluster(arm, prov)
    # Its local storage: the 150 GiB temporary disk, plus data disks for the rest (whole GiB,
    # rounded up).
    prov.grow_storage(CID, f"{W}_1", W_TEMP + 100 * GIB + 1)
    recs = arm.take()
    assert shape(recs) == [("GET", INSTANCE_1), ("PUT", INSTANCE_1)]
    assert [r.api_version for r in recs] == [COMPUTE_API] * 2
    put = recs[1].body
    # The instance's model as read (a PUT replaces it), with the disk added.
    assert (put["location"], put["sku"]["name"]) == ("westeurope", "Standard_D4ds_v5")
    assert put["properties"]["storageProfile"]["osDisk"]["name"] == f"{W}_1_OsDisk"
    assert put["properties"]["storageProfile"]["dataDisks"] == [new_disk(0, 101)]
    no_polling(recs)

    # Asked again while ARM attaches it: the model lists the disk, nothing is sent.
    prov.grow_storage(CID, f"{W}_1", W_TEMP + 101 * GIB)
    assert shape(arm.take()) == [("GET", INSTANCE_1)]

    # observe() reports each node's data disks from what it reads anyway.
    nodes = {n.instance_id: n for n in prov.observe(CID)}
    assert shape(arm.take()) == [
        ("GET", f"{DEP_PATH}/{cluster_deployment(CID)}"),
        ("GET", f"{RG_PATH}/resources"),
        ("GET", VM_ID),
        ("GET", NIC_ID),
        ("GET", f"{VMSS_ID}/virtualMachines"),
        ("GET", f"{VMSS_ID}/networkInterfaces"),
    ]
    assert nodes[f"{W}_1"].status == "RUNNING"  # Updating, and running
    # The same sum the agent reports and grow_storage compares: temporary disk + data disks.
    assert {n: node.attrs.get("disk_total_bytes") for n, node in nodes.items()} == {
        DRIVER: str(D_TEMP),
        f"{W}_0": str(W_TEMP),
        f"{W}_1": str(W_TEMP + 101 * GIB),
    }

    # Growing further keeps the disk there (as read) and takes the next LUN.
    arm.tick()
    prov.grow_storage(CID, f"{W}_1", W_TEMP + 150 * GIB)
    recs = arm.take()
    assert shape(recs) == [("GET", INSTANCE_1), ("PUT", INSTANCE_1)]
    first, second = recs[1].body["properties"]["storageProfile"]["dataDisks"]
    assert first["managedDisk"]["id"].startswith(f"{RG_ID}/Microsoft.Compute/disks/{W}_1_lun_0")
    assert second == new_disk(1, 49)
    arm.tick()
    [n1] = [n for n in prov.observe(CID) if n.instance_id == f"{W}_1"]
    assert n1.attrs["disk_total_bytes"] == str(W_TEMP + 150 * GIB)


def test_growing_the_driver_patches_its_vm(arm: FakeArm, prov: ArmProvisioner) -> None:
    running_cluster(arm, prov, workers=0)
    prov.grow_storage(CID, DRIVER, D_TEMP + 50 * GIB)
    recs = arm.take()
    assert shape(recs) == [("GET", VM_ID), ("PATCH", VM_ID)]
    assert recs[1].api_version == COMPUTE_API
    # The disk goes with the VM: it carries no ClusterId tag for stop_cluster to find.
    assert recs[1].body == {
        "properties": {"storageProfile": {"dataDisks": [new_disk(0, 50, deleteOption="Delete")]}}
    }
    no_polling(recs)

    prov.grow_storage(CID, DRIVER, D_TEMP + 50 * GIB)  # already there
    assert shape(arm.take()) == [("GET", VM_ID)]
    # More while the VM is still updating: ARM refuses, and a later call grows it.
    prov.grow_storage(CID, DRIVER, D_TEMP + 80 * GIB)
    assert shape(arm.take()) == [("GET", VM_ID), ("PATCH", VM_ID)]
    assert data_disk_bytes(arm.resources[VM_ID.lower()]["properties"]) == 50 * GIB
    arm.tick()
    prov.grow_storage(CID, DRIVER, D_TEMP + 80 * GIB)
    recs = arm.take()
    kept, added = recs[1].body["properties"]["storageProfile"]["dataDisks"]
    assert kept["managedDisk"]["id"].startswith(f"{RG_ID}/Microsoft.Compute/disks/{DRIVER}_lun_0")
    assert added == new_disk(1, 30, deleteOption="Delete")


def test_new_disks_take_the_free_luns_and_keep_the_disks_there(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    running_cluster(arm, prov, workers=0)
    vm = arm.resources[VM_ID.lower()]
    there = _made(
        [new_disk(0, 100), new_disk(2, 50), new_disk(3, 20, toBeDetached=True)], DRIVER, VM_ID
    )
    vm["properties"]["storageProfile"]["dataDisks"] = there
    [driver] = prov.observe(CID)
    # The detaching one is not counted.
    assert driver.attrs["disk_total_bytes"] == str(D_TEMP + 150 * GIB)
    arm.take()
    prov.grow_storage(CID, DRIVER, D_TEMP + 400 * GIB)
    recs = arm.take()
    assert recs[1].body["properties"]["storageProfile"]["dataDisks"] == [
        *there,
        new_disk(1, 250, deleteOption="Delete"),
    ]


def test_a_node_at_its_vm_sizes_disk_limit_is_refused_without_a_request(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    running_cluster(arm, prov)
    vmss = arm.resources[VMSS_ID.lower()]
    # A Standard_D4ds_v5 takes 8 data disks.
    vmss["instances"]["1"]["dataDisks"] = _made(
        [new_disk(i, 10) for i in range(8)], f"{W}_1", VMSS_ID
    )
    prov.grow_storage(CID, f"{W}_1", W_TEMP + 80 * GIB)  # enough already
    assert shape(arm.take()) == [("GET", INSTANCE_1)]
    with pytest.raises(DataDiskLimitReached, match="at most 8") as e:
        prov.grow_storage(CID, f"{W}_1", W_TEMP + 100 * GIB)
    assert isinstance(e.value, ProvisionerUnsupported)
    assert "Standard_D4ds_v5" in str(e.value) and f"{W}_1" in str(e.value)
    assert "cannot grow to 250 GiB: it has a 150 GiB temporary disk and 8 data disks" in str(
        e.value
    )
    assert shape(arm.take()) == [("GET", INSTANCE_1)]


def test_growing_what_is_no_vm_sends_nothing(arm: FakeArm, prov: ArmProvisioner) -> None:
    running_cluster(arm, prov)
    prov.grow_storage(CID, f"{W}_0", 0)
    prov.grow_storage(CID, f"{CID}-worker-9", 10 * GIB)  # a slot with no instance
    prov.grow_storage(CID, "someone-else_1", 10 * GIB)
    assert arm.take() == []
    # A worker that went since the last observation.
    del arm.resources[VMSS_ID.lower()]["instances"]["1"]
    prov.grow_storage(CID, f"{W}_1", 10 * GIB)
    assert shape(arm.take()) == [("GET", INSTANCE_1)]
    # One the last observation did not list yet is found by its name.
    vmss = arm.resources[VMSS_ID.lower()]
    vmss["instances"]["7"] = {"state": "Succeeded", "dataDisks": []}
    prov.grow_storage(CID, f"{W}_7", W_TEMP + 10 * GIB)
    instance_7 = f"{VMSS_ID}/virtualMachines/7"
    assert shape(arm.take()) == [("GET", instance_7), ("PUT", instance_7)]


def test_new_data_disks_sizes_and_limits() -> None:
    assert new_data_disks([], 0, max_disks=8) == []
    # Above Azure's largest disk: as few disks as that allows, of equal size.
    assert [(d["lun"], d["diskSizeGB"]) for d in new_data_disks([], 40000 * GIB, max_disks=8)] == [
        (0, 20000),
        (1, 20000),
    ]
    assert max_data_disks("Standard_D4ds_v5") == 8
    assert max_data_disks("standard_d16ds_v5") == 32
    assert max_data_disks("Standard_X1") == 64  # unknown sizes: Azure's most
    full = [new_disk(i, 1) for i in range(63)]
    assert [d["lun"] for d in new_data_disks(full, 64 * GIB, max_disks=64)] == [63]
    with pytest.raises(DataDiskLimitReached, match="2 more would be needed"):
        new_data_disks(full, 65000 * GIB, max_disks=64)
    assert data_disk_bytes({}) is None
    assert data_disk_bytes({"storageProfile": {"dataDisks": [{"lun": 0}]}}) is None


def test_the_temporary_disk_is_part_of_the_size_asked_for() -> None:
    # Asking for total T attaches data disks worth T - temporary disk - data disks there.
    temp = 150 * GIB
    assert new_data_disks([], temp, max_disks=8, temp_bytes=temp) == []
    assert new_data_disks([], 100 * GIB, max_disks=8, temp_bytes=temp) == []  # never negative
    [d] = new_data_disks([], temp + 1, max_disks=8, temp_bytes=temp)
    assert (d["lun"], d["diskSizeGB"]) == (0, 1)  # whole GiB, rounded up
    there = [new_disk(0, 100), new_disk(1, 50, toBeDetached=True)]
    [d] = new_data_disks(there, temp + 250 * GIB, max_disks=8, temp_bytes=temp)
    assert (d["lun"], d["diskSizeGB"]) == (2, 150)  # 250 - 100; the detaching one not counted
    assert new_data_disks(there, temp + 100 * GIB, max_disks=8, temp_bytes=temp) == []
    # The table: the catalog's sizes, any case; other sizes have none.
    assert temp_disk_bytes("Standard_D4ds_v5") == temp_disk_bytes("standard_d4ds_v5") == temp
    assert temp_disk_bytes("Standard_X1") == 0


def test_every_catalog_size_has_its_disk_figures() -> None:
    sizes = {t.node_type_id.lower() for t in NODE_TYPES}
    assert set(TEMP_DISK_GIB) == sizes == set(DATA_DISK_LIMITS)
    assert all(gib > 0 for gib in TEMP_DISK_GIB.values())


def test_growing_counts_the_temporary_disk(arm: FakeArm, prov: ArmProvisioner) -> None:
    running_cluster(arm, prov)
    [w0] = [n for n in prov.observe(CID) if n.instance_id == f"{W}_0"]
    assert w0.attrs["disk_total_bytes"] == str(W_TEMP)  # no data disk yet: the temporary disk
    arm.take()
    # What it has already (the control plane's first size is the one the agent reported).
    prov.grow_storage(CID, f"{W}_0", W_TEMP)
    assert shape(arm.take()) == [("GET", f"{VMSS_ID}/virtualMachines/0")]
    # Doubled: one data disk of the temporary disk's size.
    prov.grow_storage(CID, f"{W}_0", 2 * W_TEMP)
    recs = arm.take()
    assert recs[1].body["properties"]["storageProfile"]["dataDisks"] == [new_disk(0, 150)]
    arm.tick()
    [w0] = [n for n in prov.observe(CID) if n.instance_id == f"{W}_0"]
    assert w0.attrs["disk_total_bytes"] == str(2 * W_TEMP)


def test_data_disks_are_of_the_templates_disk_type() -> None:
    t = json.loads((ROOT / "infra" / "templates" / "cluster.json").read_text())
    types = {
        r["properties"]
        .get("storageProfile", {})
        .get("osDisk", {})
        .get("managedDisk", {})
        .get("storageAccountType")
        for r in t["resources"]
        if r["type"] == "Microsoft.Compute/virtualMachines"
    }
    assert types == {DATA_DISK_SKU}


# --------------------------------------------------------------------------------------------
# Instance pools: not on ARM yet.


def test_instance_pools_are_refused_with_a_message_users_can_act_on(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    ready_workspace(arm, prov)
    pool = PoolRequest("pool-1", "ws1", "Standard_D4ds_v5", "4.1.x-scala2.13")
    assert prov.pool_nodes("pool-1") == []
    assert prov.pool_ids() == set()
    calls = [
        lambda: prov.add_idle(pool, 2),
        lambda: prov.remove_idle("pool-1", ["n1"]),
        lambda: prov.start_driver(request_for(driver_pool=pool)),
        lambda: prov.start_driver(request_for(pool=pool)),
        lambda: prov.add_workers(request_for(pool=pool), 2),
    ]
    for call in calls:
        with pytest.raises(ProvisionerUnsupported) as e:
            call()
        msg = str(e.value)
        assert msg.startswith("Instance pools are not available with the Azure Resource Manager")
        assert "Create clusters without instance_pool_id" in msg
    assert arm.take() == []


# --------------------------------------------------------------------------------------------
# Conf files: in customData, written out by the bootstrap.

FAIR = """<?xml version="1.0"?>
<allocations>
  <pool name="etl"><schedulingMode>FAIR</schedulingMode><weight>2</weight></pool>
</allocations>
"""


def _conf_files_of(put: Rec) -> str:
    text = base64.b64decode(put.body["properties"]["parameters"]["customData"]["value"]).decode()
    m = re.search(r"^\s*SPARKPLANE_CONF_FILES=(\S+)$", text, re.MULTILINE)
    assert m, "no SPARKPLANE_CONF_FILES line"
    return m.group(1)


def test_conf_files_reach_the_nodes_in_custom_data(
    arm: FakeArm, templates: Path, tmp_path: Path
) -> None:
    cloud_init = ROOT / "infra" / "bootstrap" / "cloud-init.yaml"
    prov = make(arm, templates, arm_cloud_init=str(cloud_init))
    ready_workspace(arm, prov)
    files = {"fairscheduler.xml": FAIR, "log4j2.properties": "rootLogger.level = warn\n"}
    prov.start_driver(request_for(conf_files=files))
    value = _conf_files_of(arm.take()[-1])
    assert json.loads(gzip.decompress(base64.b64decode(value))) == files

    # The node end: the bootstrap's writer puts them in the Spark conf directory.
    doc = yaml.safe_load(cloud_init.read_text())
    [writer] = [f["content"] for f in doc["write_files"] if f["path"].endswith("conf_files.py")]
    script = tmp_path / "write_conf_files.py"
    script.write_text(writer)
    conf = tmp_path / "conf"
    conf.mkdir()
    r = subprocess.run(
        [sys.executable, str(script), str(conf)],
        env={"SPARKPLANE_CONF_FILES": value},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_text() for p in conf.iterdir()} == files
    # It checks the names too, and writes nothing when one is not a plain file name.
    bad = {"a.xml": "x", "../escape": "x"}
    payload = base64.b64encode(gzip.compress(json.dumps(bad).encode())).decode()
    other = tmp_path / "other"
    other.mkdir()
    r = subprocess.run(
        [sys.executable, str(script), str(other)],
        env={"SPARKPLANE_CONF_FILES": payload},
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "not a conf file: '../escape'" in r.stderr
    assert list(other.iterdir()) == [] and not (tmp_path / "escape").exists()

    # No files: an empty object, still filled in.
    prov.stop_cluster(CID)
    arm.tick(2)
    arm.take()
    prov.start_driver(request_for())
    assert json.loads(gzip.decompress(base64.b64decode(_conf_files_of(arm.take()[-1])))) == {}


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b.xml", ".hidden", "spark-defaults.conf"])
def test_a_conf_file_that_is_no_plain_file_name_is_refused(
    arm: FakeArm, prov: ArmProvisioner, name: str
) -> None:
    ready_workspace(arm, prov)
    with pytest.raises(ValueError, match="plain file name"):
        prov.start_driver(request_for(conf_files={name: "x"}))
    assert [r for r in arm.take() if r.method == "PUT"] == []


# --------------------------------------------------------------------------------------------
# spark_conf and spark_env_vars: in customData, merged by the bootstrap's write_spark_conf.py.

CLOUD_INIT_PATH = ROOT / "infra" / "bootstrap" / "cloud-init.yaml"
CONNECT_35 = "org.apache.spark:spark-connect_2.12:3.5.7"
# What bootstrap.sh hands write_spark_conf.py on a driver node (Spark 3.5: no Connect jar).
DRIVER_NODE = {
    "SPARKPLANE_ROLE": "driver",
    "SPARKPLANE_NODE_IP": "10.0.0.4",
    "SPARKPLANE_DRIVER_HOST": "10.0.0.4",
    "SPARKPLANE_CLUSTER_ID": CID,
    "SPARKPLANE_LOCAL_DIRS": "/mnt/spark",
    "SPARKPLANE_DRIVER_MEMORY_MB": "8192",
    "SPARKPLANE_CONNECT_PACKAGE": CONNECT_35,
}
WORKER_NODE = {**DRIVER_NODE, "SPARKPLANE_ROLE": "worker", "SPARKPLANE_NODE_IP": "10.0.0.5"}
ODD_KEY = "spark.hadoop.odd key=a:b#c!d"
ODD_VALUE = " lead\\dir\\ line1\nline2\r\ttab\f ünï #!=:\x01 end\\"
USER_CONF = {
    # The serverless profile's kind of settings.
    "spark.scheduler.mode": "FAIR",
    "spark.dynamicAllocation.enabled": "true",
    "spark.executor.memory": "14745m",
    # A node default the user may change.
    "spark.driver.memory": "2g",
    # Pinned: the node's own values stay (or, with none, Spark's default).
    "spark.master": "local[*]",
    "spark.driver.host": "1.2.3.4",
    "spark.ui.port": "4050",
    "spark.local.dir": "/tmp/elsewhere",
    "spark.connect.grpc.binding.port": "15003",
    "spark.connect.grpc.binding.address": "0.0.0.0",
    # Added to the Connect package.
    "spark.jars.packages": "io.delta:delta-spark_2.12:3.3.0",
    ODD_KEY: ODD_VALUE,
}
# The keys of USER_CONF the node keeps for itself, and what it writes on a driver.
PINNED_GIVEN = {
    "spark.master",
    "spark.driver.host",
    "spark.ui.port",
    "spark.local.dir",
    "spark.connect.grpc.binding.port",
    "spark.connect.grpc.binding.address",
}
DRIVER_KEYS = {
    "spark.master",
    "spark.master.rest.enabled",
    "spark.driver.host",
    "spark.ui.port",
    "spark.local.dir",
    "spark.connect.grpc.binding.port",
    "spark.app.name",
    "spark.driver.memory",
    "spark.decommission.enabled",
    "spark.storage.decommission.enabled",
    "spark.storage.decommission.shuffleBlocks.enabled",
    "spark.storage.decommission.rddBlocks.enabled",
    "spark.worker.cleanup.enabled",
    "spark.ui.showConsoleProgress",
    "spark.jars.packages",
}
USER_ENV = {
    "PYSPARK_PYTHON": "/opt/sparkplane/venv/bin/python",
    "GREETING": "say \"hi\" to $HOME and `id` \\ $(echo run) 'q' \\",
    "EMPTY": "",
}


def _placeholder(put: Rec, name: str) -> str:
    text = base64.b64decode(put.body["properties"]["parameters"]["customData"]["value"]).decode()
    m = re.search(rf"^\s*SPARKPLANE_{name}=(\S+)$", text, re.MULTILINE)
    assert m, f"no SPARKPLANE_{name} line"
    return m.group(1)


def _unpacked(value: str) -> Any:
    return json.loads(gzip.decompress(base64.b64decode(value)))


def _node_file(path: str) -> str:
    doc = yaml.safe_load(CLOUD_INIT_PATH.read_text())
    [content] = [f["content"] for f in doc["write_files"] if f["path"] == path]
    return str(content)


@pytest.fixture
def spark_conf_script(tmp_path: Path) -> Path:
    script = tmp_path / "write_spark_conf.py"
    script.write_text(_node_file("/usr/local/lib/sparkplane/write_spark_conf.py"))
    return script


def write_spark_conf(
    script: Path, out: Path, node: dict[str, str], conf: str, env: str
) -> subprocess.CompletedProcess[str]:
    """Runs the node's write_spark_conf.py as bootstrap.sh does, into `out`."""
    out.mkdir()
    return subprocess.run(
        [sys.executable, str(script), str(out), str(out / "spark-user.env")],
        env={**node, "SPARKPLANE_SPARK_CONF": conf, "SPARKPLANE_SPARK_ENV": env},
        capture_output=True,
        text=True,
    )


def _java_properties(path: Path, tmp_path: Path) -> dict[str, str] | None:
    """The file as java.util.Properties loads it (as Spark does, with a UTF-8 reader); None
    without a JDK."""
    java = shutil.which("java")
    if java is None:
        return None
    src = tmp_path / "Props.java"
    src.write_text(
        """import java.io.*;
import java.nio.charset.StandardCharsets;
import java.util.*;

public class Props {
  public static void main(String[] args) throws Exception {
    Properties p = new Properties();
    try (Reader r = new InputStreamReader(new FileInputStream(args[0]), StandardCharsets.UTF_8)) {
      p.load(r);
    }
    HexFormat h = HexFormat.of();
    for (String k : new TreeSet<>(p.stringPropertyNames())) {
      System.out.println(h.formatHex(k.getBytes(StandardCharsets.UTF_8)) + " "
          + h.formatHex(p.getProperty(k).getBytes(StandardCharsets.UTF_8)));
    }
  }
}
"""
    )
    r = subprocess.run([java, str(src), str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition(" ")
        out[bytes.fromhex(k).decode()] = bytes.fromhex(v).decode()
    return out


def _sourced(env_file: Path, names: Any = USER_ENV, cwd: Path | None = None) -> dict[str, str]:
    """The variables `names` of an environment file as bash reads it; for NAME="..." lines that
    is how systemd's EnvironmentFile reads them too (in double quotes a backslash escapes only a
    backslash, a double quote, a backquote and a dollar sign, and nothing is expanded by
    systemd)."""
    r = subprocess.run(
        ["bash", "-c", 'set -a; . "$1"; env -0', "bash", str(env_file)],
        env={},
        cwd=cwd,
        capture_output=True,
        check=True,
    )
    pairs = [item.split(b"=", 1) for item in r.stdout.split(b"\0") if item]
    return {k.decode(): v.decode() for k, v in pairs if k.decode() in names}


def test_spark_env_values_stay_data_on_the_node(
    arm: FakeArm, templates: Path, tmp_path: Path, spark_conf_script: Path
) -> None:
    """Values a shell would run (command substitution, backquotes, a closing quote and a
    command) go through customData and the node's environment file as the same characters:
    read back by bash (and so by systemd's EnvironmentFile, which never runs anything), nothing
    runs."""
    ran = tmp_path / "ran"
    env = {
        "SUBST": f"$(touch {ran}-subst)",
        "BACKQUOTE": f"`touch {ran}-backquote`",
        "QUOTE": f'a"; touch {ran}-quote; "',
        "SINGLE": f"'; touch {ran}-single; '",
        "SEMICOLON": f"x; touch {ran}-semicolon",
        "DOLLARS": "${HOME} $PATH $$ %h %%",
        "BACKSLASH": "a\\b\\",
        "BLANKS": "  lead and trail  ",
    }
    prov = make(arm, templates, arm_cloud_init=str(CLOUD_INIT_PATH))
    ready_workspace(arm, prov)
    prov.start_driver(request_for(spark_env_vars=env))
    packed = _placeholder(arm.take()[-1], "SPARK_ENV")
    assert _unpacked(packed) == env
    r = write_spark_conf(spark_conf_script, tmp_path / "node", DRIVER_NODE, "", packed)
    assert r.returncode == 0, r.stderr
    assert _sourced(tmp_path / "node" / "spark-user.env", env, cwd=tmp_path) == env
    assert not list(tmp_path.glob("ran*"))


def test_spark_conf_and_env_reach_the_nodes_spark_defaults_and_environment(
    arm: FakeArm, templates: Path, tmp_path: Path, spark_conf_script: Path
) -> None:
    prov = make(arm, templates, arm_cloud_init=str(CLOUD_INIT_PATH))
    ready_workspace(arm, prov)
    prov.start_driver(request_for(spark_conf=USER_CONF, spark_env_vars=USER_ENV))
    put = arm.take()[-1]
    conf, env = _placeholder(put, "SPARK_CONF"), _placeholder(put, "SPARK_ENV")
    assert _unpacked(conf) == USER_CONF and _unpacked(env) == USER_ENV

    # The node end, a driver: the bootstrap's merge of its settings and the cluster's.
    r = write_spark_conf(spark_conf_script, tmp_path / "driver", DRIVER_NODE, conf, env)
    assert r.returncode == 0, r.stderr
    assert all(k in r.stderr for k in PINNED_GIVEN), r.stderr  # said, on the node's log
    defaults = tmp_path / "driver" / "spark-defaults.conf"
    text = defaults.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0].startswith("#")
    for line in [
        # the cluster's
        "spark.scheduler.mode=FAIR",
        "spark.dynamicAllocation.enabled=true",
        "spark.executor.memory=14745m",
        "spark.driver.memory=2g",
        f"spark.jars.packages={CONNECT_35},io.delta:delta-spark_2.12:3.3.0",
        # the node's, pinned
        "spark.master=spark://10.0.0.4:7077",
        "spark.driver.host=10.0.0.4",
        "spark.ui.port=4040",
        "spark.local.dir=/mnt/spark",
        "spark.connect.grpc.binding.port=15002",
        "spark.master.rest.enabled=false",
        # the node's defaults
        f"spark.app.name=sparkplane {CID}",
        "spark.decommission.enabled=true",
        # escaped: blanks and separators of the key, the value's leading blank, backslashes
        # (one at the end too: no line continuation), line breaks and controls.
        "spark.hadoop.odd\\ key\\=a\\:b\\#c\\!d="
        "\\ lead\\\\dir\\\\ line1\\nline2\\r\\ttab\\f ünï #!=:\\u0001 end\\\\",
    ]:
        assert line in lines, line
    assert "local[*]" not in text and "1.2.3.4" not in text and "0.0.0.0" not in text
    # One line a key: the cluster's but the pinned ones, and the node's.
    assert len(lines) == len(set(lines)) == 1 + len({*USER_CONF} - PINNED_GIVEN | DRIVER_KEYS)
    assert stat.S_IMODE(defaults.stat().st_mode) == 0o640
    props = _java_properties(defaults, tmp_path)
    if props is not None:  # what Spark's loader reads back
        assert props[ODD_KEY] == ODD_VALUE
        assert props["spark.master"] == "spark://10.0.0.4:7077"
        assert props["spark.scheduler.mode"] == "FAIR"
        assert len(props) == len(lines) - 1

    # The environment file the Spark units read first: the values exactly, nothing run.
    env_file = tmp_path / "driver" / "spark-user.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert _sourced(env_file) == USER_ENV

    # mount-data-disks.sh still finds spark.local.dir to add a disk to.
    mount = _node_file("/usr/local/lib/sparkplane/mount-data-disks.sh")
    [expr] = re.findall(r'sed -i "(s\|\^spark\\\.local\\\.dir[^"]*)" "\$DEFAULTS"', mount)
    expr = expr.replace("$dirs", "/mnt/spark,/mnt/spark-0")
    after = subprocess.run(
        ["sed", "-e", expr, str(defaults)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert [a for a in after if a not in lines] == ["spark.local.dir=/mnt/spark,/mnt/spark-0"]

    # A worker: the master URL pinned, no driver settings, the user's packages as they are.
    r = write_spark_conf(spark_conf_script, tmp_path / "worker", WORKER_NODE, conf, env)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "worker" / "spark-defaults.conf").read_text().splitlines()
    assert "spark.master=spark://10.0.0.4:7077" in lines
    assert "spark.scheduler.mode=FAIR" in lines
    assert "spark.jars.packages=io.delta:delta-spark_2.12:3.3.0" in lines
    assert not [x for x in lines if x.startswith(("spark.driver.host", "spark.ui.port"))]
    assert "spark.driver.memory=2g" in lines  # the user's, as on any Spark node

    # None given: empty objects, still filled in, and a node with its own settings only.
    prov.stop_cluster(CID)
    arm.tick(2)
    arm.take()
    prov.start_driver(request_for(spark_conf={}, spark_env_vars={}))
    put = arm.take()[-1]
    conf, env = _placeholder(put, "SPARK_CONF"), _placeholder(put, "SPARK_ENV")
    assert _unpacked(conf) == {} and _unpacked(env) == {}
    node = {**DRIVER_NODE, "SPARKPLANE_CONNECT_PACKAGE": ""}
    r = write_spark_conf(spark_conf_script, tmp_path / "plain", node, conf, env)
    assert r.returncode == 0 and r.stderr == ""
    lines = (tmp_path / "plain" / "spark-defaults.conf").read_text().splitlines()
    assert "spark.driver.memory=8192m" in lines
    assert not [x for x in lines if x.startswith("spark.jars.packages")]
    assert (tmp_path / "plain" / "spark-user.env").read_text().count("\n") == 1  # the comment


BAD_ENV = [
    {"SPARK_HOME": "/elsewhere"},
    {"JAVA_HOME": "/usr/lib/jvm/other"},
    {"SPARK_CONF_DIR": "/tmp"},
    {"SPARK_LOCAL_IP": "0.0.0.0"},
    {"SPARK_LOCAL_DIRS": "/tmp"},
    {"SPARKPLANE_NODE_IP": "1.2.3.4"},
    {"BAD NAME": "x"},
    {"A=B": "x"},
    {"1ABC": "x"},
    {"": "x"},
    {"MULTI": "line1\nSPARK_HOME=/elsewhere"},
    {"CR": "a\rb"},
    {"NUL": "a\0b"},
    # Names that inject code (shared/domain/node_env.py).
    {"BASH_ENV": "/tmp/x.sh"},
    {"LD_PRELOAD": "/tmp/x.so"},
    {"JAVA_TOOL_OPTIONS": "-javaagent:/tmp/x.jar"},
    {"SPARK_WORKER_OPTS": "-XX:OnOutOfMemoryError=touch /tmp/x"},
    {"PYTHONPATH": "/tmp"},
    {"PATH": "/tmp"},
    {"PYSPARK_PYTHON": "python3 -c 'import os'"},
]


@pytest.mark.parametrize("env", BAD_ENV, ids=repr)
def test_spark_env_vars_the_nodes_cannot_carry_are_refused_before_the_deployment(
    arm: FakeArm, prov: ArmProvisioner, env: dict[str, str]
) -> None:
    ready_workspace(arm, prov)
    name = next(iter(env))
    with pytest.raises(ValueError, match="spark_env_vars cannot be set on the nodes") as e:
        prov.start_driver(request_for(spark_env_vars={"FINE": "1", **env}))
    assert repr(name)[1:-1] in str(e.value) and "FINE" not in str(e.value)
    assert [r for r in arm.take() if r.method == "PUT"] == []


def test_the_node_refuses_them_too_and_writes_nothing(
    tmp_path: Path, spark_conf_script: Path
) -> None:
    for i, env in enumerate(BAD_ENV):
        payload = base64.b64encode(gzip.compress(json.dumps({"FINE": "1", **env}).encode()))
        out = tmp_path / f"n{i}"
        r = write_spark_conf(spark_conf_script, out, DRIVER_NODE, "", payload.decode())
        assert r.returncode != 0 and "refused" in r.stderr, env
        assert list(out.iterdir()) == [], env


def test_the_node_and_the_provisioner_pin_the_same_settings(spark_conf_script: Path) -> None:
    script = runpy.run_path(str(spark_conf_script))
    assert script["PINNED_ENV"] == PINNED_SPARK_ENV
    assert script["ENV_PREFIX"] == RESERVED_SPARK_ENV_PREFIX
    assert script["ENV_NAME"].pattern == SPARK_ENV_NAME.pattern
    assert script["REFUSED_ENV_NAMES"] == REFUSED_NAMES
    assert script["REFUSED_ENV_PREFIXES"] == REFUSED_PREFIXES
    assert script["REFUSED_ENV_PATTERN"].pattern == REFUSED_PATTERN.pattern
    assert script["HARMLESS_PYTHON"] == HARMLESS_PYTHON
    assert script["PROGRAM_ENV"] == PROGRAM_SPARK_ENV
    assert script["PROGRAM_VALUE"].pattern == PROGRAM_VALUE.pattern
    corpus = [
        *(next(iter(env.items())) for env in BAD_ENV),
        *((name, "x") for name in REFUSED_NAMES | PINNED_SPARK_ENV | HARMLESS_PYTHON),
        *((prefix + "X", "x") for prefix in REFUSED_PREFIXES),
        ("PS4", "x"),
        ("SPARK_MASTER_OPTS", "x"),
        ("SPARK_DIST_CLASSPATH", "x"),
        ("PYSPARK_PYTHON", "/x"),
        ("PYSPARK_DRIVER_PYTHON", "python3 x"),
        ("X", 'a "b" $c'),
        ("LANG", "de_DE.UTF-8"),
        ("JAVA_OPTS", "-Xss4m"),
    ]
    for k, v in corpus:
        assert (script["env_problem"](k, v) is None) == (spark_env_problem(k, v) is None), k
    # Whatever the node sets for itself is pinned: every spark.env variable of bootstrap.sh
    # and every setting the node writes where spark_conf may not.
    bootstrap = _node_file("/usr/local/lib/sparkplane/bootstrap.sh")
    m = re.search(r"cat > /etc/sparkplane/spark\.env << EOF\n(.*?)\nEOF", bootstrap, re.DOTALL)
    assert m
    names = [line.split("=", 1)[0] for line in m.group(1).splitlines()]
    assert "PATH" in names
    assert names and all(
        n in PINNED_SPARK_ENV or n.startswith(RESERVED_SPARK_ENV_PREFIX) for n in names
    )
    for node in (DRIVER_NODE, WORKER_NODE):
        _, pinned = script["node_conf"](node)
        assert set(pinned) <= script["PINNED_CONF"]


# --------------------------------------------------------------------------------------------
# Node agents on the workers (autoscaling local storage): the scale set's own customData, and
# the node id an agent reports under.

WORKER_AGENT_ENV = {**AGENT_ENV, "SPARKPLANE_AGENT_TOKEN": "dapi-for-the-workers"}


def _text(custom_data: str) -> str:
    return base64.b64decode(custom_data).decode()


def _value(text: str, name: str) -> str:
    m = re.search(rf"^\s*SPARKPLANE_{name}=(\S*)$", text, re.MULTILINE)
    assert m, f"no SPARKPLANE_{name} line"
    return m.group(1)


def _deployed(arm: FakeArm, prov: ArmProvisioner) -> str:
    """Starts the cluster; the deployment's customData (the driver's, and the workers' of a
    cluster without node agents)."""
    ready_workspace(arm, prov)
    prov.start_driver(request_for())
    put = arm.take()[-1]
    arm.tick(2)
    prov.observe(CID)
    arm.take()
    return _text(put.body["properties"]["parameters"]["customData"]["value"])


def _instances_custom_data(arm: FakeArm) -> list[str]:
    vmss = arm.resources[VMSS_ID.lower()]
    return [vmss["instances"][i]["customData"] for i in sorted(vmss["instances"], key=int)]


def test_workers_with_an_agent_env_boot_with_the_node_agent(arm: FakeArm, templates: Path) -> None:
    prov = make(
        arm,
        templates,
        arm_cloud_init=str(CLOUD_INIT_PATH),
        arm_agent_source_url="https://example.org/sparkplane.tar.gz",
        arm_agent_source_sha256="ab" * 32,
    )
    deployed = _deployed(arm, prov)
    assert _value(deployed, "NODE_AGENT") == "0"  # the deployment's workers run no agent

    added = prov.add_workers(request_for(agent_env=WORKER_AGENT_ENV), 2)
    assert [(n.role, n.status) for n in added] == [("worker", "STARTING")] * 2
    recs = arm.take()
    assert shape(recs) == [("PATCH", VMSS_ID)]  # one operation: capacity and model
    body = recs[0].body
    assert body["sku"] == {"name": "Standard_D4ds_v5", "tier": "Standard", "capacity": 2}
    custom = body["properties"]["virtualMachineProfile"]["osProfile"]["customData"]
    text = _text(custom)
    # The node-mode agent's environment, and what the template fills in the deployment's copy.
    assert {
        name: _value(text, name)
        for name in ("ROLE", "DRIVER_HOST", "NODE_AGENT", "CLUSTER_ID", "CONTROL_PLANE_URL")
    } == {
        "ROLE": "worker",
        "DRIVER_HOST": "10.0.0.4",  # the driver NIC's, as observe() read it
        "NODE_AGENT": "1",
        "CLUSTER_ID": CID,
        "CONTROL_PLANE_URL": "https://sp.azurewebsites.net",
    }
    assert _value(text, "AGENT_TOKEN") == "dapi-for-the-workers"
    assert re.findall(r"__SPARKPLANE_[A-Z0-9_]+__", text) == []
    # Otherwise the deployment's cloud-init, unchanged.
    assert text == (
        deployed.replace("__SPARKPLANE_ROLE__", "worker")
        .replace("__SPARKPLANE_DRIVER_HOST__", "10.0.0.4")
        .replace("SPARKPLANE_NODE_AGENT=0", "SPARKPLANE_NODE_AGENT=1")
        .replace("dapi0123456789abcdef", "dapi-for-the-workers")
    )
    no_polling(recs)
    # The instances the PATCH made boot with it.
    assert _instances_custom_data(arm) == [custom, custom]


def test_workers_without_an_agent_env_get_no_custom_data(arm: FakeArm, templates: Path) -> None:
    prov = make(arm, templates, arm_cloud_init=str(CLOUD_INIT_PATH))
    deployed = _deployed(arm, prov)
    prov.add_workers(request_for(agent_env={}), 2)
    recs = arm.take()
    # Nothing but the capacity: the model keeps the deployment's customData.
    assert [r.body for r in recs] == [
        {"sku": {"name": "Standard_D4ds_v5", "tier": "Standard", "capacity": 2}}
    ]
    for custom in _instances_custom_data(arm):
        text = _text(custom)
        assert text == deployed.replace("__SPARKPLANE_ROLE__", "worker").replace(
            "__SPARKPLANE_DRIVER_HOST__", "10.0.0.4"
        )
        assert _value(text, "NODE_AGENT") == "0"  # the bootstrap starts no agent on them


def test_workers_with_an_agent_env_wait_for_the_drivers_address(
    arm: FakeArm, templates: Path
) -> None:
    prov = make(arm, templates, arm_cloud_init=str(CLOUD_INIT_PATH))
    _deployed(arm, prov)
    arm.resources[VM_ID.lower()]["properties"]["provisioningState"] = "Failed"
    [driver] = prov.observe(CID)
    assert (driver.status, driver.private_ip) == ("LOST", "")
    arm.take()
    assert prov.add_workers(request_for(agent_env=WORKER_AGENT_ENV), 1) == []
    assert arm.take() == []


def test_the_lifecycle_gives_workers_of_an_elastic_disk_cluster_the_node_agent(
    tmp_path: Path, templates: Path
) -> None:
    from shared.adapters.embedded_bus import EmbeddedBus
    from shared.adapters.sqlite_store import SqliteStore
    from shared.domain.states import State
    from shared.services.auth import Principal
    from shared.wiring import Container, SystemClock

    arm = FakeArm()
    prov = make(arm, templates, arm_cloud_init=str(CLOUD_INIT_PATH))
    agents = FakeAgents(arm)
    c = Container(
        settings=Settings(data_dir=tmp_path / "data", agent_callback_url=BASE),
        store=SqliteStore(tmp_path / "store.db"),
        bus=EmbeddedBus(tmp_path / "bus.db"),
        provisioner=prov,
        clock=SystemClock(),
    )
    c.admin.create_workspace({"name": "one", "workspace_id": "ws1", "region": "westeurope"})
    arm.tick(2)
    p = Principal("ws1", "admin", "t")
    cid = c.clusters.create(
        p,
        {
            "cluster_name": "c",
            "spark_version": "4.1.x-scala2.13",
            "node_type_id": "Standard_D4ds_v5",
            "num_workers": 2,
            "enable_elastic_disk": True,
        },
    )
    for _ in range(8):
        c.lifecycle.reconcile("ws1", cid)
        got = c.repo.load("ws1", cid)
        assert got is not None
        if got[0].state == State.RUNNING:
            break
        arm.tick()
        agents.heartbeat(c.utilization)
    assert got[0].state == State.RUNNING
    vmss_id = VMSS_ID.replace(CID, cid)
    [patch] = [r for r in arm.requests if (r.method, r.path) == ("PATCH", vmss_id)]
    assert patch.body["sku"]["capacity"] == 2
    text = _text(patch.body["properties"]["virtualMachineProfile"]["osProfile"]["customData"])
    assert (_value(text, "ROLE"), _value(text, "NODE_AGENT")) == ("worker", "1")
    assert _value(text, "CLUSTER_ID") == cid
    assert _value(text, "CONTROL_PLANE_URL") == BASE
    assert _value(text, "AGENT_TOKEN").startswith("dapi")


# The node end: node-id.sh asks the instance metadata service for the VM's name.

IMDS_URL = "http://169.254.169.254/metadata/instance?api-version=2021-02-01"


def _imds(name: str | None) -> str:
    compute: dict[str, Any] = {"vmSize": "Standard_D4ds_v5", "location": "westeurope"}
    if name is not None:
        compute["name"] = name
        if "_" in name:
            compute["vmScaleSetName"] = name.rsplit("_", 1)[0]
    return json.dumps({"compute": compute, "network": {"interface": []}})


@pytest.fixture
def node_bin(tmp_path: Path) -> Path:
    """node-id.sh, and a bin directory with a curl that answers like the instance metadata
    service (imds.json, exit code in curl-rc) and records its arguments (curl-args); python3 is
    this interpreter."""
    script = tmp_path / "node-id.sh"
    script.write_text(_node_file("/usr/local/lib/sparkplane/node-id.sh"))
    script.chmod(0o755)  # as cloud-init writes it
    stub = tmp_path / "bin"
    stub.mkdir()
    curl = stub / "curl"
    curl.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$@" > {tmp_path}/curl-args\n'
        f"rc=$(cat {tmp_path}/curl-rc 2> /dev/null || echo 0)\n"
        f'[[ "$rc" == 0 ]] && cat {tmp_path}/imds.json\n'
        'exit "$rc"\n'
    )
    curl.chmod(0o755)
    (stub / "python3").symlink_to(sys.executable)
    return tmp_path


def _node_env(node_bin: Path) -> dict[str, str]:
    return {"PATH": f"{node_bin / 'bin'}:/usr/bin:/bin"}


def test_node_id_is_the_vm_name_from_the_instance_metadata_service(node_bin: Path) -> None:
    def node_id(answer: str, rc: int = 0) -> subprocess.CompletedProcess[str]:
        (node_bin / "imds.json").write_text(answer)
        (node_bin / "curl-rc").write_text(str(rc))
        return subprocess.run(
            ["bash", str(node_bin / "node-id.sh")],
            env=_node_env(node_bin),
            capture_output=True,
            text=True,
        )

    # A worker: <scale set>_<instance id>, the node id observe() reports for it.
    r = node_id(_imds(f"{W}_3"))
    assert (r.returncode, r.stdout) == (0, f"{W}_3\n"), r.stderr
    args = (node_bin / "curl-args").read_text().splitlines()
    assert args[-1] == IMDS_URL
    assert args[args.index("-H") + 1] == "Metadata:true"
    # The driver: its VM's name.
    assert node_id(_imds(DRIVER)).stdout == f"{DRIVER}\n"
    # No answer, no name, or a name that an environment file could not carry: an error.
    for answer, rc, said in [
        ("", 7, "did not answer"),
        (_imds(None), 0, "no compute.name"),
        ("not json", 0, "no compute.name"),
        (_imds("x y;touch /tmp/p"), 0, "unexpected VM name"),
    ]:
        r = node_id(answer, rc)
        assert r.returncode != 0 and r.stdout == "" and said in r.stderr, (answer, r.stderr)


def _agent_fragment(node_bin: Path) -> str:
    """bootstrap.sh's lines that decide whether the node runs the agent and write its
    agent-node.env (paths moved under node_bin)."""
    bootstrap = _node_file("/usr/local/lib/sparkplane/bootstrap.sh")
    decide = re.search(r"^AGENT=no\n.*?AGENT=yes; fi$", bootstrap, re.MULTILINE | re.DOTALL)
    block = re.search(r"^# The agent's own settings.*?^fi$", bootstrap, re.MULTILINE | re.DOTALL)
    assert decide and block
    text = decide.group(0) + "\n" + block.group(0)
    for path in ("/usr/local/lib/sparkplane/node-id.sh", "/etc/sparkplane/agent-node.env"):
        assert path in text
        text = text.replace(path, str(node_bin / Path(path).name))
    return 'set -euo pipefail\nlog() { echo "$*" >&2; }\n' + text + '\necho "AGENT=$AGENT"\n'


# The driver's agent also runs the cluster's job tasks, joined to its Spark Connect server
# (on localhost, where pyspark sends the cluster's token without TLS).
DRIVER_TASKS = (
    "SPARKPLANE_TASKS_DIR=/var/lib/sparkplane-agent/tasks\n"
    "SPARKPLANE_CONNECT_URL=sc://localhost:15002/;token=tok123\n"
)


@pytest.mark.parametrize(
    ("role", "node_agent", "imds_up", "agent", "env_file"),
    [
        ("worker", "1", True, "yes", f"SPARKPLANE_NODE_ID={W}_3\nSPARKPLANE_SPARK_UI_URL=\n"),
        ("driver", "0", True, "yes", f"SPARKPLANE_NODE_ID={DRIVER}\n{DRIVER_TASKS}"),
        (
            "driver",
            "__SPARKPLANE_NODE_AGENT__",
            True,
            "yes",
            f"SPARKPLANE_NODE_ID={DRIVER}\n{DRIVER_TASKS}",
        ),
        ("worker", "0", True, "no", None),
        ("worker", "__SPARKPLANE_NODE_AGENT__", True, "no", None),
        # No node id: a worker runs no agent, the driver's reports Spark's load only.
        ("worker", "1", False, "no", None),
        ("driver", "0", False, "yes", None),
    ],
)
def test_the_bootstrap_gives_the_agent_its_node_id(
    node_bin: Path,
    role: str,
    node_agent: str,
    imds_up: bool,
    agent: str,
    env_file: str | None,
) -> None:
    name = DRIVER if role == "driver" else f"{W}_3"
    (node_bin / "imds.json").write_text(_imds(name))
    (node_bin / "curl-rc").write_text("0" if imds_up else "7")
    r = subprocess.run(
        ["bash", "-c", _agent_fragment(node_bin)],
        env={
            **_node_env(node_bin),
            "ROLE": role,
            "SPARKPLANE_NODE_AGENT": node_agent,
            "SPARKPLANE_CONNECT_TOKEN": "tok123",
            "DRIVER_HOST": "10.1.0.4",
        },
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"AGENT={agent}\n"
    written = node_bin / "agent-node.env"
    assert (written.read_text() if written.exists() else None) == env_file
    if written.exists():
        assert written.stat().st_mode & 0o777 == 0o600  # the token is in it
    if agent == "no" and imds_up:
        assert not (node_bin / "curl-args").exists()  # not even asked
    if env_file is None:
        return
    # What the agent makes of its environment (the unit reads spark.env, agent.env, then this
    # file; a later line wins): the node id, and on a worker node mode.
    spark_env = {"SPARK_LOCAL_DIRS": str(node_bin), "SPARKPLANE_SPARK_UI_URL": "http://x:4040"}
    env = {**spark_env, **dict(line.split("=", 1) for line in env_file.splitlines())}
    disk = agent_module.measure_disk(env)
    assert disk is not None and disk["node_id"] == name
    assert bool(env.get("SPARKPLANE_SPARK_UI_URL")) == (role == "driver")


# ---------------------------------------------------------------- the cluster's Spark credentials


def test_spark_credentials_reach_the_nodes_and_no_one_else(
    arm: FakeArm, templates: Path, tmp_path: Path, spark_conf_script: Path
) -> None:
    """The cluster's secret and Connect token travel in customData (a securestring parameter);
    the node pins spark.authenticate with the secret, whatever spark_conf says, the Connect unit
    reads the token from a root-only file, and the bootstrap refuses to start without them."""
    prov = make(arm, templates, arm_cloud_init=str(CLOUD_INIT_PATH))
    ready_workspace(arm, prov)
    user_conf = {"spark.authenticate": "false", "spark.authenticate.secret": "mine", "a.b": "c"}
    prov.start_driver(
        request_for(spark_conf=user_conf, spark_auth_secret="s" * 64, connect_token="t" * 64)
    )
    put = arm.take()[-1]
    assert _placeholder(put, "SPARK_AUTH_SECRET") == "s" * 64
    assert _placeholder(put, "CONNECT_TOKEN") == "t" * 64
    conf = _placeholder(put, "SPARK_CONF")
    assert _unpacked(conf) == {"a.b": "c"}  # reserved keys dropped before they leave
    params = json.loads(Path(templates / "cluster.json").read_text())["parameters"]
    assert params["customData"]["type"].lower() == "securestring"

    # The node end: even a spark_conf that names them cannot turn authentication off.
    node = {**WORKER_NODE, "SPARKPLANE_SPARK_AUTH_SECRET": "s" * 64}
    packed = base64.b64encode(gzip.compress(json.dumps(user_conf).encode())).decode()
    r = write_spark_conf(spark_conf_script, tmp_path / "w", node, packed, _unpacked_empty())
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "w" / "spark-defaults.conf").read_text()
    assert "spark.authenticate=true\n" in text
    assert f"spark.authenticate.secret={'s' * 64}\n" in text and "mine" not in text

    boot = _node_file("/usr/local/lib/sparkplane/bootstrap.sh")
    assert 'die "the cluster\'s Spark secret was not filled in"' in boot
    assert 'umask 077 && echo "SPARK_CONNECT_AUTHENTICATE_TOKEN=' in boot
    assert "sc://localhost:15002/;token=$SPARKPLANE_CONNECT_TOKEN" in boot
    unit = _node_file("/etc/systemd/system/spark-connect.service")
    assert "EnvironmentFile=/etc/sparkplane/connect.env" in unit
    node_env = _node_file("/etc/sparkplane/node.env")
    assert "SPARKPLANE_SPARK_AUTH_SECRET=__SPARKPLANE_SPARK_AUTH_SECRET__" in node_env
    doc = yaml.safe_load(CLOUD_INIT_PATH.read_text())
    [node_file] = [f for f in doc["write_files"] if f["path"] == "/etc/sparkplane/node.env"]
    assert node_file["permissions"] == "0600"


def _unpacked_empty() -> str:
    return base64.b64encode(gzip.compress(b"{}")).decode()


# ------------------------------------------------------- the managed groups' deny assignment

PRINCIPAL = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def guard_templates(templates: Path) -> Path:
    (templates / "workspace-guard.json").write_text(
        (ROOT / "infra" / "templates" / "workspace-guard.json").read_text()
    )
    return templates


def test_a_workspace_group_gets_a_deny_assignment_that_spares_the_control_plane(
    arm: FakeArm, guard_templates: Path
) -> None:
    prov = make(arm, guard_templates, arm_principal_id=PRINCIPAL)
    prov.create_workspace("ws1", "northeurope")
    [put] = [r for r in arm.take() if "deploymentstacks" in r.path.lower()]
    assert put.method == "PUT" and put.api_version == "2024-03-01"
    stacks = f"/subscriptions/{SUB}/providers/microsoft.resources/deploymentstacks"
    assert put.path.lower() == f"{stacks}/sparkplane-guard-ws1".lower()
    props = put.body["properties"]
    assert props["denySettings"] == {
        "mode": "denyWriteAndDelete",
        "applyToChildScopes": True,
        "excludedPrincipals": [PRINCIPAL],
        "excludedActions": [],
    }
    # Deleting the stack never deletes the group (the workspace deletion does, knowingly).
    assert set(props["actionOnUnmanage"].values()) == {"detach"}
    params = {k: v["value"] for k, v in props["parameters"].items()}
    assert params == {
        "groupName": prov.group_name("ws1"),
        "location": "northeurope",
        "managedBy": PLATFORM,
        "tags": {"Vendor": "sparkplane", "WorkspaceId": "ws1"},
    }
    [group] = props["template"]["resources"]
    assert group["type"] == "Microsoft.Resources/resourceGroups"
    assert put.body["location"] == "northeurope"

    prov.delete_workspace("ws1")
    [delete] = [r for r in arm.take() if "deploymentstacks" in r.path.lower()]
    assert delete.method == "DELETE"
    assert delete.query["unmanageAction.ResourceGroups"] == "detach"
    assert not arm.stacks


def test_no_principal_no_deny_assignment(arm: FakeArm, guard_templates: Path) -> None:
    prov = make(arm, guard_templates)
    prov.create_workspace("ws1")
    prov.delete_workspace("ws1")
    assert not [r for r in arm.take() if "deploymentstacks" in r.path.lower()]


def test_the_guard_needs_a_principal_guid() -> None:
    from shared.domain.azure_guard import guard_stack

    with pytest.raises(ValueError, match="principal id"):
        guard_stack(
            template={},
            group="g",
            location="l",
            managed_by="",
            tags={},
            control_plane_principal_id="not-a-guid",
        )


def test_workers_the_scale_set_did_not_take_leave_no_slot(
    arm: FakeArm, prov: ArmProvisioner
) -> None:
    """A capacity PATCH that is not sent (the write budget is spent: ProvisionerThrottled)
    starts no worker, so its slots go again: the reconcile retried later asks anew, and no
    observe() raises the capacity for them (it would leave out the workers' customData)."""
    from shared.ports import ProvisionerThrottled

    running_cluster(arm, prov, workers=1)
    before = [n.node_id for n in prov.observe(CID)]
    arm.take()
    # Spent for a minute (as after a 429): writes refill in real time here, and a loaded
    # machine could take long enough before the PATCH for one to come back.
    prov.throttle.budget(SUB).throttled("writes", 60, prov._clock())
    with pytest.raises(ProvisionerThrottled):
        prov.add_workers(request_for(), 2)
    assert arm.take() == []
    assert [n.node_id for n in prov.observe(CID)] == before
    assert not [r for r in arm.take() if r.method == "PATCH"]
