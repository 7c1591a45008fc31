"""CI checks of infra/: the ARM templates the provisioner deploys, the platform's Bicep, the node
bootstrap, the app settings against the code that reads them, and checkov over all of it.

Nothing here talks to Azure: the templates are checked for structure and for the contracts the
rest of the code relies on (parameter names, placeholders, settings), and checkov (run from the
project's venv) must report no failed check, every skip justified where it is made.
"""

from __future__ import annotations

import ast
import base64
import functools
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pycep import BicepParser

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
TEMPLATES = INFRA / "templates"
MAIN_BICEP = INFRA / "main.bicep"
CLOUD_INIT = INFRA / "bootstrap" / "cloud-init.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

# The ARM provisioner (shared/adapters/arm/) deploys the templates with exactly these.
CLUSTER_PARAMS = {
    "clusterId",
    "location",
    "driverVmSize",
    "workerVmSize",
    "workerCount",
    "subnetId",
    "customData",
    "tags",
    "adminPublicKey",
}
WORKSPACE_PARAMS = {"workspaceId", "location"}

JSON_TEMPLATES = sorted(INFRA.rglob("*.json"))
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
REF = re.compile(r"\b(parameters|variables)\(\s*'([^']+)'\s*\)")
PLACEHOLDER = re.compile(r"__SPARKPLANE_([A-Z0-9_]+?)__")
# Azure's limit on customData: 65535 bytes, i.e. 87380 characters of base64.
MAX_CUSTOM_DATA = 87380


def _strings(node: Any) -> Iterator[str]:
    """Every string in a JSON document, keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _refs(node: Any, kind: str) -> set[str]:
    return {name for s in _strings(node) for k, name in REF.findall(s) if k == kind}


def _load(name: str) -> dict[str, Any]:
    return json.loads((TEMPLATES / name).read_text())


def _resources(template: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [r for r in template["resources"] if r["type"].lower() == rtype.lower()]


def _resolve(value: Any, variables: dict[str, Any]) -> Any:
    """A value that is exactly "[variables('x')]" replaced by x's definition."""
    while isinstance(value, str) and (m := re.fullmatch(r"\[variables\('([^']+)'\)\]", value)):
        value = variables[m.group(1)]
    return value


def _expand(expr: str, variables: dict[str, Any], depth: int = 0) -> str:
    """An expression with its variables('x') replaced by their (JSON) definitions."""
    assert depth < 10, "variables nest too deep (a cycle?)"

    def sub(m: re.Match[str]) -> str:
        value = variables[m.group(1)]
        text = value if isinstance(value, str) else json.dumps(value)
        return _expand(text, variables, depth + 1)

    return re.sub(r"variables\(\s*'([^']+)'\s*\)", sub, expr)


# ---------------------------------------------------------------------------------------------
# ARM JSON templates
# ---------------------------------------------------------------------------------------------


def test_the_templates_are_there() -> None:
    names = {p.name for p in JSON_TEMPLATES}
    assert {"workspace.json", "cluster.json"} <= names


@pytest.mark.parametrize("path", JSON_TEMPLATES, ids=lambda p: str(p.relative_to(INFRA)))
def test_template_is_an_arm_template(path: Path) -> None:
    t = json.loads(path.read_text())
    assert t["$schema"].startswith("https://schema.management.azure.com/schemas/")
    # workspace-guard.json is deployed at subscription scope (a deployment stack).
    assert t["$schema"].endswith(
        ("/deploymentTemplate.json#", "/subscriptionDeploymentTemplate.json#")
    )
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", t["contentVersion"])
    assert isinstance(t["resources"], list) and t["resources"]
    for r in t["resources"]:
        assert {"type", "apiVersion", "name"} <= r.keys(), r


@pytest.mark.parametrize("path", JSON_TEMPLATES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_parameter_and_variable_is_declared_and_used(path: Path) -> None:
    t = json.loads(path.read_text())
    params = set(t.get("parameters", {}))
    variables = set(t.get("variables", {}))
    body = {k: v for k, v in t.items() if k not in ("parameters",)}
    used_params = _refs(body, "parameters")
    used_vars = _refs({k: v for k, v in body.items() if k != "variables"}, "variables")
    # A variable may be used by another variable that is used.
    used_vars |= _refs(t.get("variables", {}), "variables")
    assert used_params <= params, f"undeclared parameters: {used_params - params}"
    assert params <= used_params, f"unused parameters: {params - used_params}"
    assert used_vars <= variables, f"undeclared variables: {used_vars - variables}"
    assert variables <= used_vars, f"unused variables: {variables - used_vars}"
    for name, p in t.get("parameters", {}).items():
        assert p.get("metadata", {}).get("description"), f"parameter {name} has no description"


def test_the_provisioner_contract_parameter_names() -> None:
    assert set(_load("cluster.json")["parameters"]) == CLUSTER_PARAMS
    assert set(_load("workspace.json")["parameters"]) == WORKSPACE_PARAMS
    cluster = _load("cluster.json")["parameters"]
    assert cluster["workerCount"]["type"] == "int"
    assert cluster["tags"]["type"] == "object"
    # The agent token travels in customData: kept out of the deployment's history.
    assert cluster["customData"]["type"] == "securestring"
    assert cluster["adminPublicKey"]["defaultValue"] == ""


def test_workspace_template() -> None:
    t = _load("workspace.json")
    assert set(t["outputs"]) >= {"subnetId", "storageAccountName"}
    (vnet,) = _resources(t, "Microsoft.Network/virtualNetworks")
    (subnet,) = vnet["properties"]["subnets"]
    (nsg,) = _resources(t, "Microsoft.Network/networkSecurityGroups")
    assert "networkSecurityGroups" in subnet["properties"]["networkSecurityGroup"]["id"]
    assert nsg["name"].strip("[]") in subnet["properties"]["networkSecurityGroup"]["id"]
    # The nodes have no public IPs: outbound goes through the NAT gateway only.
    assert subnet["properties"]["defaultOutboundAccess"] is False
    assert "natGateways" in subnet["properties"]["natGateway"]["id"]
    (sa,) = _resources(t, "Microsoft.Storage/storageAccounts")
    props = sa["properties"]
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["allowBlobPublicAccess"] is False
    assert props["allowSharedKeyAccess"] is False
    assert props["networkAcls"]["defaultAction"] == "Deny"


def test_the_nsg_admits_nothing_from_outside_the_vnet() -> None:
    t = _load("workspace.json")
    (nsg,) = _resources(t, "Microsoft.Network/networkSecurityGroups")
    rules = [r["properties"] for r in nsg["properties"]["securityRules"]]
    priorities = [(r["direction"], r["priority"]) for r in rules]
    assert len(priorities) == len(set(priorities)), "two rules with one priority"
    subnet = t["variables"]["subnetPrefix"]
    for r in rules:
        if r["direction"] != "Inbound" or r["access"] != "Allow":
            continue
        src = r["sourceAddressPrefix"]
        assert src in ("VirtualNetwork", "AzureLoadBalancer", "[variables('subnetPrefix')]"), r
        if src == "[variables('subnetPrefix')]":
            assert subnet.startswith("10.")
    inbound = sorted((r for r in rules if r["direction"] == "Inbound"), key=lambda r: r["priority"])
    last = inbound[-1]
    assert (last["access"], last["sourceAddressPrefix"], last["destinationPortRange"]) == (
        "Deny",
        "*",
        "*",
    )


SPARK_PORTS = ("7077", "15002", "8080", "8081", "4040")


def test_spark_ports_open_only_inside_the_clusters_subnet() -> None:
    """Issue 15: the Spark ports (master, Connect, UIs, and the random worker/driver/block
    ports: any port) are allowed in from the clusters' own subnet only; from the rest of the
    VNet (and peered networks) only SSH, key-authenticated."""
    t = _load("workspace.json")
    (nsg,) = _resources(t, "Microsoft.Network/networkSecurityGroups")
    rules = [r["properties"] for r in nsg["properties"]["securityRules"]]
    allowed = [r for r in rules if r["direction"] == "Inbound" and r["access"] == "Allow"]
    for r in allowed:
        ports = r.get("destinationPortRanges") or [r["destinationPortRange"]]
        if r["sourceAddressPrefix"] == "[variables('subnetPrefix')]":
            assert r["destinationAddressPrefix"] == "[variables('subnetPrefix')]", r
            continue
        if r["sourceAddressPrefix"] == "AzureLoadBalancer":
            continue  # health probes of the platform (no Spark client)
        assert ports == ["22"], r
        assert not any(p in SPARK_PORTS for p in ports), r


def test_cluster_template_tags_every_resource_with_the_cluster_id() -> None:
    t = _load("cluster.json")
    for r in t["resources"]:
        assert "tags" in r, f"{r['type']} is not tagged"
        tags = _expand(r["tags"], t["variables"])
        assert "parameters('tags')" in tags and "'ClusterId', parameters('clusterId')" in tags, r[
            "type"
        ]


def test_cluster_template_nodes() -> None:
    t = _load("cluster.json")
    assert "publicIPAddress" not in json.dumps(t), "a node must not get a public IP"
    (vm,) = _resources(t, "Microsoft.Compute/virtualMachines")
    (vmss,) = _resources(t, "Microsoft.Compute/virtualMachineScaleSets")
    (nic,) = _resources(t, "Microsoft.Network/networkInterfaces")
    assert nic["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"] == (
        "[parameters('subnetId')]"
    )
    assert vmss["properties"]["orchestrationMode"] == "Uniform"
    assert vmss["properties"]["overprovision"] is False
    assert vmss["sku"]["capacity"] == "[parameters('workerCount')]"
    assert vmss["sku"]["name"] == "[parameters('workerVmSize')]"
    assert vm["properties"]["hardwareProfile"]["vmSize"] == "[parameters('driverVmSize')]"
    vmss_profile = vmss["properties"]["virtualMachineProfile"]
    ipconf = vmss_profile["networkProfile"]["networkInterfaceConfigurations"][0]["properties"]
    assert ipconf["ipConfigurations"][0]["properties"]["subnet"]["id"] == (
        "[parameters('subnetId')]"
    )
    assert "managedDisk" in vm["properties"]["storageProfile"]["osDisk"]
    assert vm["properties"]["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
    for os_profile in (vm["properties"]["osProfile"], vmss_profile["osProfile"]):
        linux = _resolve(os_profile["linuxConfiguration"], t["variables"])
        assert linux["disablePasswordAuthentication"] is True
        assert linux["ssh"]["publicKeys"][0]["keyData"] == "[variables('sshKey')]"
        assert "adminPassword" not in os_profile
        assert "parameters('customData')" in os_profile["customData"]


def test_cluster_template_fills_the_per_node_placeholders() -> None:
    t = _load("cluster.json")
    (vm,) = _resources(t, "Microsoft.Compute/virtualMachines")
    (vmss,) = _resources(t, "Microsoft.Compute/virtualMachineScaleSets")
    placeholders = {t["variables"]["rolePlaceholder"], t["variables"]["driverHostPlaceholder"]}
    assert placeholders == {"__SPARKPLANE_ROLE__", "__SPARKPLANE_DRIVER_HOST__"}
    driver = vm["properties"]["osProfile"]["customData"]
    worker = vmss["properties"]["virtualMachineProfile"]["osProfile"]["customData"]
    for expr, role in ((driver, "driver"), (worker, "worker")):
        assert f"variables('rolePlaceholder'), '{role}')" in expr
        assert "variables('driverHostPlaceholder'), reference(" in expr
        assert "privateIPAddress" in expr
        assert expr.startswith("[base64(replace(replace(base64ToString(")


def _ed25519_point_exists(y: int) -> bool:
    p = 2**255 - 19
    d = (-121665 * pow(121666, -1, p)) % p
    if y >= p:
        return False
    xx = (y * y - 1) * pow(d * y * y + 1, -1, p) % p
    x = pow(xx, (p + 3) // 8, p)
    if (x * x - xx) % p:
        x = x * pow(2, (p - 1) // 4, p) % p
    return (x * x - xx) % p == 0


def test_the_locked_ssh_key_is_derived_as_documented() -> None:
    """Nobody holds the private key of the default SSH key: its point comes from a hash."""
    n = 0
    while True:
        h = hashlib.sha256(b"sparkplane locked ssh key %d" % n).digest()
        y = int.from_bytes(h, "little") & ((1 << 255) - 1)
        if _ed25519_point_exists(y):
            break
        n += 1

    def field(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    blob = field(b"ssh-ed25519") + field(y.to_bytes(32, "little"))
    expected = "ssh-ed25519 " + base64.b64encode(blob).decode()
    t = _load("cluster.json")
    assert t["variables"]["lockedSshKey"].startswith(expected + " ")
    assert "lockedSshKey" in t["metadata"]


# ---------------------------------------------------------------------------------------------
# Bicep
# ---------------------------------------------------------------------------------------------


@functools.cache
def _parse_bicep(path: Path) -> dict[str, Any]:
    """A Bicep file as pycep parses it, once per file for the module (a parse takes seconds of
    CPU; the tests only read the result)."""
    doc: dict[str, Any] = BicepParser().parse(file_path=path)
    return doc


@pytest.fixture(scope="module")
def bicep() -> dict[str, Any]:
    return _parse_bicep(MAIN_BICEP)


def _number(value: Any) -> Any:
    """pycep writes -1 as a unary minus applied to 1."""
    if isinstance(value, dict) and value.get("operator", {}).get("type") == "minus":
        return -value["operator"]["operands"]["integer_value"]
    return value


def _config(resource: dict[str, Any]) -> dict[str, Any]:
    return resource["config"]


def _by_type(doc: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in doc["resources"].items() if r["type"].lower() == rtype.lower()}


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_bicep_parses(path: Path) -> None:
    doc = _parse_bicep(path)
    assert doc["resources"]
    for name, p in doc.get("parameters", {}).items():
        decorators = {d["type"] for d in p.get("decorators", [])}
        assert "description" in decorators, f"{path.name}: parameter {name} has no description"


def test_bicep_session_queues(bicep: dict[str, Any]) -> None:
    queues = _by_type(bicep, "Microsoft.ServiceBus/namespaces/queues")
    names = {_config(q)["name"] for q in queues.values()}
    assert names == {"lifecycleQueueName", "jobsQueueName"}  # the parameters
    assert bicep["parameters"]["lifecycleQueueName"]["default"] == "cluster-lifecycle"
    assert bicep["parameters"]["jobsQueueName"]["default"] == Settings().jobs_queue
    for q in queues.values():
        props = _config(q)["properties"]
        if isinstance(props, str):  # a shared variable
            props = bicep["variables"][props]["value"]
        assert props["requiresSession"] is True
        assert props["requiresDuplicateDetection"] is True
        assert props["duplicateDetectionHistoryTimeWindow"] == "PT10M"
        assert props["maxDeliveryCount"] == 10
        assert props["lockDuration"] == "PT1M"
        assert props["deadLetteringOnMessageExpiration"] is True
    (ns,) = _by_type(bicep, "Microsoft.ServiceBus/namespaces").values()
    assert _config(ns)["sku"]["name"] in ("Standard", "Premium")  # sessions need Standard+
    assert _config(ns)["properties"]["disableLocalAuth"] is True


def test_bicep_cosmos_is_geo_replicated(bicep: dict[str, Any]) -> None:
    (account,) = _by_type(bicep, "Microsoft.DocumentDB/databaseAccounts").values()
    props = _config(account)["properties"]
    locations = props["locations"]
    assert len(locations) >= 2
    assert sorted(loc["failoverPriority"] for loc in locations) == list(range(len(locations)))
    names = [loc["locationName"] for loc in locations]
    assert len(set(names)) == len(names)
    assert props["enableAutomaticFailover"] is True
    assert props["consistencyPolicy"]["defaultConsistencyLevel"] == "Session"
    assert props["disableLocalAuth"] is True
    # Single write region unless asked for, with the conflict policy stated on the parameter.
    writes = props["enableMultipleWriteLocations"]
    assert bicep["parameters"][writes]["default"] is False
    (desc,) = [d for d in bicep["parameters"][writes]["decorators"] if d["type"] == "description"]
    assert "LastWriterWins" in json.dumps(desc)


def test_bicep_cosmos_containers(bicep: dict[str, Any]) -> None:
    containers = _by_type(bicep, "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers")
    by_id = {_config(c)["properties"]["resource"]["id"]: _config(c) for c in containers.values()}
    assert set(by_id) == {"docs", "events", "samples"}
    docs = by_id["docs"]["properties"]["resource"]
    events = by_id["events"]["properties"]["resource"]
    samples = by_id["samples"]["properties"]["resource"]
    assert docs["partitionKey"]["paths"] == ["/pk"]
    assert samples["partitionKey"]["paths"] == ["/pk"]
    assert events["partitionKey"]["paths"] == ["/cluster_id"]
    assert _number(docs["defaultTtl"]) == -1 and _number(samples["defaultTtl"]) == -1
    assert events["defaultTtl"]  # an expression of eventTtlDays
    # cluster documents never lose a conflicting write silently; events and samples may
    assert docs["conflictResolutionPolicy"] == {"mode": "Custom"}
    for c in (events, samples):
        assert c["conflictResolutionPolicy"]["mode"] == "LastWriterWins"


def test_bicep_cosmos_containers_match_the_adapter(bicep: dict[str, Any]) -> None:
    from shared.adapters.cosmos_store import DOCS, EVENTS, SAMPLES

    containers = _by_type(bicep, "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers")
    by_id = {
        _config(c)["properties"]["resource"]["id"]: _config(c)["properties"]["resource"]
        for c in containers.values()
    }
    for spec in (DOCS, SAMPLES, EVENTS):
        assert by_id[spec.name]["partitionKey"]["paths"] == [spec.partition_key_path]
        if spec.indexing_policy is not None:
            assert by_id[spec.name]["indexingPolicy"] == spec.indexing_policy
        if spec.conflict_resolution_policy is not None:
            policy = by_id[spec.name]["conflictResolutionPolicy"]
            assert policy == spec.conflict_resolution_policy


def test_bicep_function_app(bicep: dict[str, Any]) -> None:
    (plan,) = _by_type(bicep, "Microsoft.Web/serverfarms").values()
    assert _config(plan)["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    (app,) = _by_type(bicep, "Microsoft.Web/sites").values()
    config = _config(app)
    assert config["identity"]["type"] == "SystemAssigned"
    assert config["properties"]["httpsOnly"] is True
    fac = config["properties"]["functionAppConfig"]
    assert fac["runtime"] == {"name": "python", "version": "3.11"}
    assert fac["deployment"]["storage"]["authentication"]["type"] == "SystemAssignedIdentity"
    accounts = _by_type(bicep, "Microsoft.Storage/storageAccounts")
    assert set(accounts) == {"storage", "filesStorage"}
    for account in accounts.values():
        assert _config(account)["properties"]["allowSharedKeyAccess"] is False
    assert set(bicep["outputs"]) >= {"functionAppHostname", "cosmosEndpoint", "serviceBusFqdn"}


def test_bicep_role_assignments_replace_keys(bicep: dict[str, Any]) -> None:
    text = MAIN_BICEP.read_text()
    role_ids = {
        "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
        "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
        "Azure Service Bus Data Owner": "090c5cfd-751d-490a-894a-3ce6f1109419",
        "Cosmos DB Built-in Data Contributor": "00000000-0000-0000-0000-000000000002",
    }
    for name, guid in role_ids.items():
        assert guid in text, name
    assert len(_by_type(bicep, "Microsoft.Authorization/roleAssignments")) >= 4
    assert _by_type(bicep, "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments")
    # The provisioner's grants: the workspaces' subscription, and each further one.
    paths = [m["detail"]["path"] for m in bicep["modules"].values()]
    assert paths == ["modules/provisioner-rbac.bicep"] * 2
    rbac = _parse_bicep(INFRA / "modules" / "provisioner-rbac.bicep")
    (role,) = _by_type(rbac, "Microsoft.Authorization/roleDefinitions").values()
    (perms,) = _config(role)["properties"]["permissions"]
    assert "*" not in perms["actions"]
    assert "Microsoft.Storage/storageAccounts/listKeys/action" in perms["notActions"]
    assert "Microsoft.Resources/subscriptions/resourceGroups/write" in perms["actions"]


def _provisioner_actions() -> set[str]:
    rbac = _parse_bicep(INFRA / "modules" / "provisioner-rbac.bicep")
    (role,) = _by_type(rbac, "Microsoft.Authorization/roleDefinitions").values()
    (perms,) = _config(role)["properties"]["permissions"]
    return {a.lower() for a in perms["actions"]}


def _template_types(t: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for r in t["resources"]:
        out.add(r["type"])
        out |= _template_types({"resources": r.get("resources", [])})
    return out


def test_the_provisioner_role_holds_what_arm_py_calls_and_nothing_more() -> None:
    """Issue 15: the custom role lists each action (no write wildcard), derived from what the
    ARM provisioner requests itself and what ARM checks when it deploys the templates."""
    from shared.adapters import arm

    actions = _provisioner_actions()
    for a in actions:
        assert "*" not in a or a.endswith("/*/read"), a
    for forbidden in ("runcommand", "extensions", "peer", "listkeys", "accountsas", "login"):
        assert not [a for a in actions if forbidden in a], forbidden
    # Every resource a template makes: read, write and delete (a role assignment comes from
    # the conditioned delegation instead).
    for name in ("workspace.json", "cluster.json"):
        for rtype in _template_types(_load(name)):
            if rtype == "Microsoft.Authorization/roleAssignments":
                continue
            for verb in ("read", "write"):
                assert f"{rtype}/{verb}".lower() in actions, (rtype, verb)
            if rtype.count("/") == 1 or rtype.endswith("/containers"):  # what ARM deletes
                assert f"{rtype}/delete".lower() in actions, rtype
    # What the ARM provisioner reads or deletes through the generic API, and its own calls.
    for rtype in arm.API_VERSIONS:
        assert f"{rtype}/read" in actions and f"{rtype}/delete" in actions, rtype
    for a in (
        "Microsoft.Resources/subscriptions/resourceGroups/write",
        "Microsoft.Resources/subscriptions/resourceGroups/delete",
        "Microsoft.Resources/subscriptions/resources/read",
        "Microsoft.ResourceGraph/resources/read",
        "Microsoft.Resources/deployments/write",
        "Microsoft.Resources/deployments/cancel/action",
        "Microsoft.Resources/deployments/delete",
        "Microsoft.Compute/virtualMachineScaleSets/delete/action",
        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write",
        "Microsoft.Compute/virtualMachines/instanceView/read",
        "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
        "Microsoft.Network/virtualNetworks/subnets/join/action",
        # the deny assignments (shared/domain/azure_guard.py)
        "Microsoft.Resources/deploymentStacks/write",
        "Microsoft.Resources/deploymentStacks/delete",
        "Microsoft.Resources/deploymentStacks/manageDenySetting/action",
    ):
        assert a.lower() in actions, a


def test_the_rbac_delegation_is_conditioned_on_role_and_principal(bicep: dict[str, Any]) -> None:
    text = (INFRA / "modules" / "provisioner-rbac.bicep").read_text()
    (condition,) = re.findall(r"^var delegationCondition = '(.*)'$", text, re.MULTILINE)
    storage_blob_data_contributor = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
    # Writes: that one role, to a service principal, never the control plane's own identity.
    assert "GuidEquals {${storageBlobDataContributor}}" in condition
    assert f"storageBlobDataContributor = '{storage_blob_data_contributor}'" in text
    assert (
        "PrincipalType] ForAnyOfAnyValues:StringEqualsIgnoreCase {\\'ServicePrincipal\\'}"
        in condition
    )
    assert "PrincipalId] ForAnyOfAllValues:GuidNotEquals {${principalId}}" in condition
    # Deletes: that role's assignments only.
    assert "@Resource[Microsoft.Authorization/roleAssignments:RoleDefinitionId]" in condition
    assert "conditionVersion: '2.0'" in text


def test_the_workspaces_live_in_a_subscription_named_by_a_setting(bicep: dict[str, Any]) -> None:
    text = MAIN_BICEP.read_text()
    assert "param workspacesSubscriptionId string = subscription().subscriptionId" in text
    assert "scope: subscription(workspacesSubscriptionId)" in text
    assert "SPARKPLANE_ARM_SUBSCRIPTION_ID: workspacesSubscriptionId" in text
    assert "SPARKPLANE_ARM_PRINCIPAL_ID: functionApp.identity.principalId" in text


def test_the_guard_template_is_the_managed_group_alone() -> None:
    t = _load("workspace-guard.json")
    assert t["$schema"].endswith("/subscriptionDeploymentTemplate.json#")
    (group,) = t["resources"]
    assert group["type"] == "Microsoft.Resources/resourceGroups"
    assert set(t["parameters"]) == {"groupName", "location", "managedBy", "tags"}


def _accessor(node: Any) -> list[str]:
    """`a.b.c` as pycep writes it (nested property accessors) -> ["a", "b", "c"]."""
    if isinstance(node, str):
        return [node]
    operands = node["operator"]["operands"]
    return [*_accessor(operands["operand_1"]), *_accessor(operands["operand_2"])]


def test_bicep_files_account(bicep: dict[str, Any]) -> None:
    """The blob file store's account: identity only, soft delete, the container the app's
    settings name, and Storage Blob Data Contributor for the app on this account alone."""
    files = _config(bicep["resources"]["filesStorage"])
    props = files["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    assert files["sku"]["name"] in ("Standard_GRS", "Standard_RAGRS", "Standard_GZRS")

    (service,) = [
        _config(r)
        for r in _by_type(bicep, "Microsoft.Storage/storageAccounts/blobServices").values()
        if _config(r)["parent"] == "filesStorage"
    ]
    retention = service["properties"]["deleteRetentionPolicy"]
    assert retention["enabled"] is True and retention["days"] >= 7

    container = _config(bicep["resources"]["filesContainer"])
    assert container["properties"]["publicAccess"] == "None"
    name = bicep["variables"][container["name"]]["value"]
    assert name == Settings().files_container

    s = _app_settings(bicep)
    assert _accessor(s["SPARKPLANE_FILES_ACCOUNT_URL"]) == [
        "filesStorage",
        "properties",
        "primaryEndpoints",
        "blob",
    ]
    assert _accessor(s["SPARKPLANE_FILES_CONTAINER"]) == ["filesContainer", "name"]

    grants = [
        _config(r)
        for r in _by_type(bicep, "Microsoft.Authorization/roleAssignments").values()
        if _config(r).get("scope") == "filesStorage"
    ]
    assert len(grants) == 1
    (grant,) = grants
    role = grant["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
    assert bicep["variables"][role]["value"] == "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
    assert _accessor(grant["properties"]["principalId"]) == [
        "functionApp",
        "identity",
        "principalId",
    ]
    # The app settings wait for the grant, so the app never starts without access.
    settings = _config(bicep["resources"]["functionAppSettings"])
    assert "filesContributor" in settings["dependsOn"]


# ---------------------------------------------------------------------------------------------
# App settings: main.bicep against the code that reads them, and against docs/deploy.md
# ---------------------------------------------------------------------------------------------


def _app_settings(bicep: dict[str, Any]) -> dict[str, Any]:
    return bicep["variables"]["appSettings"]["value"]


def _literal_app_settings() -> dict[str, str]:
    """The settings main.bicep sets to a string literal (pycep does not tell a literal from a
    symbol of the same name, so these are read from the source)."""
    block = MAIN_BICEP.read_text().split("var appSettings = {", 1)[1].split("\n}\n", 1)[0]
    return dict(re.findall(r"^\s*([A-Za-z0-9_]+): '([^']*)'$", block, re.MULTILINE))


def _settings_env_names() -> set[str]:
    return {f"SPARKPLANE_{name.upper()}" for name in Settings.model_fields}


def _binding_settings() -> tuple[set[str], set[str]]:
    """(%NAME% expressions, connection names) of the triggers in functions/*.py."""
    expressions: set[str] = set()
    connections: set[str] = set()
    for path in sorted((ROOT / "functions").glob("*.py")):
        text = path.read_text()
        expressions |= set(re.findall(r"%([A-Za-z0-9_]+)%", text))
        connections |= set(re.findall(r"connection\s*=\s*\"([A-Za-z0-9_]+)\"", text))
    return expressions, connections


def test_app_settings_configure_the_azure_adapters(bicep: dict[str, Any]) -> None:
    s = _app_settings(bicep)
    literal = _literal_app_settings()
    assert literal["SPARKPLANE_STORE"] == "cosmos"
    assert literal["SPARKPLANE_BUS"] == "servicebus"
    assert literal["SPARKPLANE_PROVISIONER"] == "arm"
    assert literal["SPARKPLANE_FILES"] == "blob"
    for name in (
        "SPARKPLANE_COSMOS_ENDPOINT",
        "SPARKPLANE_COSMOS_DATABASE",
        "SPARKPLANE_COSMOS_PREFERRED_LOCATIONS",
        "SPARKPLANE_SERVICEBUS_FQDN",
        "SPARKPLANE_FILES_ACCOUNT_URL",
        "SPARKPLANE_FILES_CONTAINER",
        "SPARKPLANE_LIFECYCLE_QUEUE",
        "SPARKPLANE_RECONCILER_SCHEDULE",
        "SPARKPLANE_SERVICEBUS__fullyQualifiedNamespace",
        "AzureWebJobsStorage__accountName",
    ):
        assert name in s, name
    # The literal values parse as the app's Settings reads them from the environment.
    env = {k: v for k, v in literal.items() if k.startswith("SPARKPLANE_") and "__" not in k}
    Settings.model_validate({k.removeprefix("SPARKPLANE_").lower(): v for k, v in env.items()})


def test_every_binding_setting_is_set(bicep: dict[str, Any]) -> None:
    s = _app_settings(bicep)
    expressions, connections = _binding_settings()
    assert expressions and connections
    for name in expressions:
        assert name in s, f"%{name}% (functions/) has no app setting in main.bicep"
    for name in connections:
        assert f"{name}__fullyQualifiedNamespace" in s, f"connection {name} has no namespace"
        # A value under the plain name would be taken as a connection string.
        assert name not in s


def test_every_sparkplane_app_setting_is_read_by_the_app(bicep: dict[str, Any]) -> None:
    expressions, connections = _binding_settings()
    known = _settings_env_names() | expressions
    for name in _app_settings(bicep):
        if not name.startswith("SPARKPLANE_") or name.split("__")[0] in connections:
            continue
        assert name in known, f"{name} is set in main.bicep but nothing reads it (a typo?)"


def test_deploy_doc_lists_every_setting(bicep: dict[str, Any]) -> None:
    doc = DEPLOY_DOC.read_text()
    expressions, connections = _binding_settings()
    names = _settings_env_names() | expressions | set(_app_settings(bicep))
    names |= {f"{c}__fullyQualifiedNamespace" for c in connections}
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"docs/deploy.md does not document {missing}"


# ---------------------------------------------------------------------------------------------
# Node bootstrap
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud_init() -> dict[str, Any]:
    text = CLOUD_INIT.read_text()
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def _files(doc: dict[str, Any]) -> dict[str, str]:
    return {f["path"]: f["content"] for f in doc["write_files"]}


def test_cloud_init_placeholders_are_documented() -> None:
    text = CLOUD_INIT.read_text()
    header = text.split("\n\n", 1)[0]
    body = text[len(header) :]
    used = set(PLACEHOLDER.findall(body))
    documented = set(re.findall(r"^#\s{3,}([A-Z0-9_]+)\s{2,}", header, re.MULTILINE))
    assert used == documented
    assert {"ROLE", "DRIVER_HOST", "CLUSTER_ID", "CONTROL_PLANE_URL", "AGENT_TOKEN"} <= used


def test_cloud_init_fits_in_custom_data() -> None:
    # With room for the values the provisioner puts in (a URL and a token are short).
    assert len(base64.b64encode(CLOUD_INIT.read_bytes())) < MAX_CUSTOM_DATA - 4096


def test_cloud_init_agent_env(cloud_init: dict[str, Any]) -> None:
    files = {f["path"]: f for f in cloud_init["write_files"]}
    agent_env = files["/etc/sparkplane/agent.env"]
    assert agent_env["permissions"] == "0600"
    names = {line.split("=", 1)[0] for line in agent_env["content"].splitlines() if line}
    assert names == {
        "SPARKPLANE_CONTROL_PLANE_URL",
        "SPARKPLANE_CLUSTER_ID",
        "SPARKPLANE_AGENT_TOKEN",
    }
    unit = files["/etc/systemd/system/sparkplane-agent.service"]["content"]
    assert "EnvironmentFile=/etc/sparkplane/agent.env" in unit
    assert re.search(r"^ExecStart=\S+/python -m shared\.agent$", unit, re.MULTILINE)


def test_cloud_init_scripts_parse(cloud_init: dict[str, Any]) -> None:
    scripts = 0
    for path, content in _files(cloud_init).items():
        if path.endswith(".sh"):
            r = subprocess.run(["bash", "-n"], input=content, text=True, capture_output=True)
            assert r.returncode == 0, f"{path}: {r.stderr}"
            scripts += 1
        elif path.endswith(".py"):
            ast.parse(content, filename=path)
            scripts += 1
    assert scripts >= 2
    runcmd = json.dumps(cloud_init["runcmd"])
    assert "/usr/local/lib/sparkplane/bootstrap.sh" in runcmd


def test_cloud_init_starts_spark_by_role(cloud_init: dict[str, Any]) -> None:
    files = _files(cloud_init)
    units = {Path(p).name: c for p, c in files.items() if p.endswith(".service")}
    assert "org.apache.spark.deploy.master.Master" in units["spark-master.service"]
    assert "org.apache.spark.deploy.worker.Worker" in units["spark-worker.service"]
    assert "SPARKPLANE_SPARK_MASTER_URL" in units["spark-worker.service"]
    assert "SparkConnectServer" in units["spark-connect.service"]
    bootstrap = files["/usr/local/lib/sparkplane/bootstrap.sh"]
    assert "openjdk-17-jre-headless" in bootstrap
    assert "pyspark[connect]==$PYSPARK_VERSION" in bootstrap
    assert "systemctl enable --now spark-master.service spark-connect.service" in bootstrap
    assert "systemctl enable --now spark-worker.service" in bootstrap
    # The spark.env every unit reads holds the worker's master URL, built from the driver host.
    assert "SPARKPLANE_SPARK_MASTER_URL=spark://$DRIVER_HOST:7077" in bootstrap


def test_cloud_init_starts_each_role_when_the_master_rpc_port_answers(
    cloud_init: dict[str, Any],
) -> None:
    """The Connect server and the Workers wait for the master's RPC port (a Worker started
    before it waits for Spark's 5-15 s retry), within a start timeout that covers the wait."""
    files = _files(cloud_init)
    units = {Path(p).name: c for p, c in files.items() if p.endswith(".service")}
    waits = {
        name: re.findall(r"^ExecStartPre=\S*wait-for-port\.sh (\S+) (\d+) (\d+)$", c, re.M)
        for name, c in units.items()
    }
    assert waits["spark-connect.service"] == [("${SPARKPLANE_NODE_IP}", "7077", "300")]
    assert waits["spark-worker.service"] == [("${SPARKPLANE_DRIVER_HOST}", "7077", "420")]
    for name in ("spark-connect.service", "spark-worker.service"):
        limit = int(waits[name][0][2])
        timeout = re.search(r"^TimeoutStartSec=(\d+)$", units[name], re.M)
        assert timeout and int(timeout.group(1)) > limit, name
    # The daemons' JVM options reach the master and the Workers, never the Connect server
    # (Spark's launcher hands SPARK_DAEMON_JAVA_OPTS to it too).
    for name in ("spark-master.service", "spark-worker.service"):
        assert "SPARK_DAEMON_JAVA_OPTS=-XX:TieredStopAtLevel=1 -XX:+UseSerialGC" in units[name]
    assert "SPARK_DAEMON_JAVA_OPTS" not in units["spark-connect.service"]
    assert "SPARK_DAEMON_JAVA_OPTS" not in files["/usr/local/lib/sparkplane/bootstrap.sh"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_cloud_init_units_verify(cloud_init: dict[str, Any], tmp_path: Path) -> None:
    for path, content in _files(cloud_init).items():
        if path.endswith(".service"):
            (tmp_path / Path(path).name).write_text(content)
    units = sorted(str(p) for p in tmp_path.glob("*.service"))
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    # Only the programs that the bootstrap installs on the node may be missing here.
    problems = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if line.strip()
        and not re.search(
            r"Command (/opt/sparkplane/|/usr/local/lib/sparkplane/)\S* is not executable", line
        )
    ]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# checkov
# ---------------------------------------------------------------------------------------------


def _checkov() -> list[str]:
    exe = Path(sys.executable).with_name("checkov")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("checkov")
    if found:
        return [found]
    pytest.fail("checkov is not installed in the venv (it is a dev dependency: pip install .[dev])")


def test_checkov_passes_with_every_skip_justified() -> None:
    cmd = [
        *_checkov(),
        "--directory",
        str(INFRA),
        "--framework",
        "bicep",
        "arm",
        "--compact",
        "--skip-download",
        "--output",
        "json",
    ]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "ERROR"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    assert r.stdout.strip(), f"checkov printed nothing (exit {r.returncode}): {r.stderr[-2000:]}"
    reports = json.loads(r.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_type = {rep["check_type"]: rep for rep in reports}
    assert set(by_type) == {"bicep", "arm"}, set(by_type)
    failed = []
    for check_type, rep in by_type.items():
        summary = rep["summary"]
        assert summary["parsing_errors"] == 0, (check_type, summary)
        assert summary["resource_count"] > 0 and summary["passed"] > 0, (check_type, summary)
        failed += [
            f"{c['check_id']} {c['file_path']} {c['resource']}: {c['check_name']}"
            for c in rep["results"]["failed_checks"]
        ]
        for c in rep["results"]["skipped_checks"]:
            reason = (c.get("check_result") or {}).get("suppress_comment", "")
            assert len(reason.strip()) > 20 and reason != "No comment provided", (
                f"{c['check_id']} on {c['resource']} is skipped without a reason"
            )
    assert not failed, "checkov failed:\n" + "\n".join(failed)
    assert r.returncode == 0, r.stderr[-2000:]
