"""An in-process Azure Resource Manager: an azure-core `HttpTransport` that the real management
clients (`ResourceManagementClient`, `DeploymentsMgmtClient`) send to, for the ARM provisioner's
tests, the provisioner contract suite and `bench.azure_scale`.

It answers the way ARM does: 201/200 with `Azure-AsyncOperation` on a deployment PUT,
provisioningState Accepted -> Running -> Succeeded as time passes (`tick()`) or as an
operation is polled, 202 with `Location` on deletes, 409 where ARM refuses (a deployment
already running, a NIC still attached), and tag filtered listings that, like ARM, leave the
tags out. When a deployment succeeds it makes what the template would make, so observe() has
VMs and scale-set instances to read back. VMs and instances carry a storage profile: a PATCH
of a VM replaces its data disk list, a PUT of a scale-set instance replaces its model's, new
empty disks get a managed disk id, and the VM is Updating (409 to a second update) until time
passes. A scale set keeps its model's customData (the deployment's, with ROLE and DRIVER_HOST
filled as cluster.json does, or the one a PATCH set) and each instance the one of the model it
was made from; like ARM, no GET returns it.

Throttling (`ArmLimits`, off unless given): ARM's per-subscription token buckets as Azure
documents them ("Understand how Azure Resource Manager throttles requests"): reads 250 with a
refill of 25/s, writes 200 at 10/s, deletes 200 at 10/s, on the `clock` given. Every answer
carries `x-ms-ratelimit-remaining-subscription-reads` (or `-writes`, `-deletes`); a request
finding its bucket empty gets 429 `TooManyRequests` with `Retry-After` (whole seconds until a
token is back) and changes nothing. `counts` tallies requests by kind, `throttled` the 429s,
and `latency_s` adds the modelled latency of each request (`ArmLimits.latency_s`) without
waiting for it.

`FakeAgents` plays the nodes' side of readiness: the driver agent's `ready` reports for the
driver VMs that run (the ARM provisioner reports a node RUNNING only after one).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._requests_basic import RestRequestsTransportResponse
from requests.structures import CaseInsensitiveDict

SUB = "00000000-0000-0000-0000-000000000001"
BASE = "https://fake-arm.local"
ACTIVE = ("Accepted", "Running")


@dataclass
class ArmLimits:
    """ARM's request limits per subscription (Azure's documented bucket sizes and refills)
    and the modelled latency of a request by kind, in seconds."""

    reads: tuple[float, float] = (250, 25.0)
    writes: tuple[float, float] = (200, 10.0)
    deletes: tuple[float, float] = (200, 10.0)
    latency_s: dict[str, float] = field(
        default_factory=lambda: {"reads": 0.05, "writes": 0.3, "deletes": 0.3}
    )


class _Bucket:
    def __init__(self, size: float, refill: float, now: float) -> None:
        self.size, self.refill, self.tokens, self.at = size, refill, size, now

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is back."""
        self.tokens = min(self.size, self.tokens + (now - self.at) * self.refill)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.refill


class _Resources(dict[str, dict[str, Any]]):
    """Resources by lower-cased id, indexed by resource group too (a group's listing does
    not walk the whole subscription)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_group: dict[str, dict[str, dict[str, Any]]] = {}
        self.by_cluster: dict[str, dict[str, dict[str, Any]]] = {}

    def __setitem__(self, rid: str, r: dict[str, Any]) -> None:
        super().__setitem__(rid, r)
        self.by_group.setdefault(_rg(rid), {})[rid] = r
        cid = (r.get("tags") or {}).get("ClusterId")
        if cid:
            self.by_cluster.setdefault(cid, {})[rid] = r

    def __delitem__(self, rid: str) -> None:
        r = self[rid]
        super().__delitem__(rid)
        self.by_group.get(_rg(rid), {}).pop(rid, None)
        cid = (r.get("tags") or {}).get("ClusterId")
        if cid:
            self.by_cluster.get(cid, {}).pop(rid, None)

    def in_group(self, group: str) -> Any:
        return self.by_group.get(group, {}).values()


def request_kind(method: str) -> str:
    """Which of ARM's buckets a request draws from."""
    m = method.upper()
    if m in ("GET", "HEAD"):
        return "reads"
    if m == "DELETE":
        return "deletes"
    return "writes"


@dataclass
class Rec:
    method: str
    path: str
    api_version: str | None
    query: dict[str, str]
    body: Any

    def __repr__(self) -> str:
        return f"{self.method} {self.path}"


def _norm(path: str) -> str:
    return "/" + "/".join(p for p in path.split("/") if p)


class FakeArm(HttpTransport):
    """An in-memory Azure Resource Manager for one subscription."""

    def __init__(
        self,
        *,
        workspace_outputs: bool = True,
        delete_with_vm: bool = True,
        limits: ArmLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        record: bool = True,
        subscription: str = SUB,
    ) -> None:
        self.sub = subscription
        self.requests: list[Rec] = []
        # Keep each request (the tests read them); a benchmark only counts.
        self.record = record
        self.clock = clock
        self.set_limits(limits)
        self.counts: Counter[str] = Counter()
        self.throttled = 0
        self.latency_s = 0.0
        # Deployment PUTs ARM accepted, by deployment name.
        self.deployments_accepted: Counter[str] = Counter()
        self.groups: dict[str, dict[str, Any]] = {}
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.resources = _Resources()
        self.stacks: dict[str, dict[str, Any]] = {}
        self.ops: dict[str, tuple[str, Any]] = {}
        self.fail_cluster_deployments = False
        self.workspace_outputs = workspace_outputs
        # cluster.json gives the driver's NIC and OS disk deleteOption Delete.
        self.delete_with_vm = delete_with_vm
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # -- HttpTransport

    def set_limits(self, limits: ArmLimits | None) -> None:
        """ARM's throttling model from now on (None: no limits), its buckets full."""
        self.limits = limits
        now = self.clock()
        self._buckets = (
            {
                "reads": _Bucket(*limits.reads, now),
                "writes": _Bucket(*limits.writes, now),
                "deletes": _Bucket(*limits.deletes, now),
            }
            if limits
            else {}
        )

    def open(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> FakeArm:
        return self

    def __exit__(self, *args: Any) -> None: ...

    def sleep(self, duration: float) -> None:  # LRO polling without waiting
        pass

    def send(self, request: Any, **kwargs: Any) -> RestRequestsTransportResponse:
        url = urlsplit(request.url)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        raw = request.content
        body = json.loads(raw) if raw else None
        path = _norm(url.path)
        with self._lock:
            api_version = query.pop("api-version", None)
            if self.record:
                self.requests.append(Rec(request.method, path, api_version, query, body))
            status, payload, headers = self._limited(request.method, path, query, body)
        r = requests.Response()
        r.status_code = status
        r.reason = "OK" if status < 400 else "Error"
        r.raw = io.BytesIO(b"" if payload is None else json.dumps(payload).encode())
        r.headers = CaseInsensitiveDict({"Content-Type": "application/json", **headers})
        r.url = request.url
        return RestRequestsTransportResponse(request=request, internal_response=r)

    def _limited(
        self, method: str, path: str, q: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        """The answer, or 429 when the request's bucket is empty (nothing changes then)."""
        kind = request_kind(method)
        if path.lower().startswith("/providers/microsoft.resourcegraph/"):
            # Resource Graph is not a request of the subscription: its own limit (15 queries
            # per 5 s per user), not modelled here.
            self.counts["graph"] += 1
            return self._route(method, path, q, body)
        self.counts[kind] += 1
        if self.limits is None:
            return self._route(method, path, q, body)
        self.latency_s += self.limits.latency_s.get(kind, 0.0)
        bucket = self._buckets[kind]
        wait = bucket.take(self.clock())
        remaining = {f"x-ms-ratelimit-remaining-subscription-{kind}": str(int(bucket.tokens))}
        if wait > 0:
            self.throttled += 1
            status, payload, _ = _err(429, "TooManyRequests")
            return status, payload, {**remaining, "Retry-After": str(max(1, math.ceil(wait)))}
        status, payload, headers = self._route(method, path, q, body)
        return status, payload, {**headers, **remaining}

    # -- time
    def tick(self, n: int = 1) -> None:
        """Time passes: every operation in flight moves one step."""
        for _ in range(n):
            with self._lock:
                for key in list(self.deployments):
                    self._advance(("deployment", key))
                for rid in list(self.resources):
                    self._advance(("resource", rid))
                for g in list(self.groups):
                    self._advance(("group", g))

    def _advance(self, target: tuple[str, Any]) -> None:
        kind, key = target
        if kind == "deployment":
            d = self.deployments.get(key)
            if d is None:
                return
            s = d["state"]
            if s == "Accepted":
                d["state"] = "Running"
            elif s == "Running":
                cluster = key[1].startswith("sparkplane-cluster-")
                if cluster and self.fail_cluster_deployments:
                    d["state"] = "Failed"
                else:
                    d["state"] = "Succeeded"
                    self._materialize(key[0], key[1], d)
            elif s == "Deleting":
                del self.deployments[key]
        elif kind == "resource":
            r = self.resources.get(key)
            if r is None:
                return
            if r["properties"]["provisioningState"] == "Deleting":
                del self.resources[key]
                if self.delete_with_vm:
                    for rid, other in list(self.resources.items()):
                        if (other.get("attached_to") or "").lower() == key:
                            del self.resources[rid]
                return
            if r["properties"]["provisioningState"] == "Updating":
                r["properties"]["provisioningState"] = "Succeeded"
            for iid, inst in list(r.get("instances", {}).items()):
                if inst["state"] in ("Creating", "Updating"):
                    inst["state"] = "Succeeded"
                elif inst["state"] == "Deleting":
                    del r["instances"][iid]
        elif kind == "group":
            g = self.groups.get(key)
            if g is not None and g["properties"]["provisioningState"] == "Deleting":
                del self.groups[key]
                for k in [k for k in self.deployments if k[0] == key]:
                    del self.deployments[k]
                for rid in list(self.resources.by_group.get(key, {})):
                    del self.resources[rid]

    # -- what a deployment makes
    def _materialize(self, group: str, name: str, d: dict[str, Any]) -> None:
        if name != "sparkplane-workspace" and not name.startswith("sparkplane-cluster-"):
            return
        params = {k: v["value"] for k, v in d["body"]["properties"]["parameters"].items()}
        loc = params["location"]
        rgp = f"/subscriptions/{self.sub}/resourceGroups/{self.groups[group]['name']}/providers"
        if name == "sparkplane-workspace":
            vnet = f"{rgp}/Microsoft.Network/virtualNetworks/workers-vnet"
            subnet = f"{vnet}/subnets/workers"
            self._put_res(vnet, loc, {}, props={"subnets": [{"id": subnet, "name": "workers"}]})
            self._put_res(f"{rgp}/Microsoft.Network/networkSecurityGroups/workers-sg", loc, {})
            self._put_res(f"{rgp}/Microsoft.Storage/storageAccounts/dbstorage1", loc, {})
            if self.workspace_outputs:
                d["outputs"] = {"subnetId": {"type": "String", "value": subnet}}
            return
        cid, tags = params["clusterId"], params["tags"]
        prefix = f"sp-{cid}"
        disk = f"{rgp}/Microsoft.Compute/disks/{prefix}-driver-osdisk"
        nic = f"{rgp}/Microsoft.Network/networkInterfaces/{prefix}-driver-nic"
        vm = f"{rgp}/Microsoft.Compute/virtualMachines/{prefix}-driver"
        vmss = f"{rgp}/Microsoft.Compute/virtualMachineScaleSets/{prefix}-workers"
        self._put_res(disk, loc, tags, attached_to=vm)
        self._put_res(
            nic,
            loc,
            tags,
            attached_to=vm,
            props={"ipConfigurations": [{"properties": {"privateIPAddress": "10.0.0.4"}}]},
        )
        self._put_res(
            vm,
            loc,
            tags,
            props={
                "timeCreated": "2030-01-01T00:00:00.1234567+00:00",
                "hardwareProfile": {"vmSize": params["driverVmSize"]},
                "storageProfile": _storage(f"{prefix}-driver_OsDisk", []),
                "networkProfile": {"networkInterfaces": [{"id": nic}]},
            },
        )
        existing = self.resources.get(vmss.lower())
        if existing is None:
            self._put_res(
                vmss,
                loc,
                tags,
                sku={"name": params["workerVmSize"], "tier": "Standard", "capacity": 0},
            )
            existing = self.resources[vmss.lower()]
            existing["instances"] = {}
            existing["next"] = 0
        # What cluster.json gives the scale set's model: the deployment's customData with the
        # two per-node placeholders filled.
        text = base64.b64decode(params["customData"]).decode()
        text = text.replace("__SPARKPLANE_ROLE__", "worker")
        text = text.replace("__SPARKPLANE_DRIVER_HOST__", "10.0.0.4")
        existing["custom_data"] = base64.b64encode(text.encode()).decode()
        self._scale(existing, int(params["workerCount"]), ready=True)

    def _put_res(
        self,
        rid: str,
        location: str,
        tags: dict[str, str],
        *,
        props: dict[str, Any] | None = None,
        sku: dict[str, Any] | None = None,
        attached_to: str | None = None,
    ) -> None:
        parts = rid.strip("/").split("/")
        i = parts.index("providers")
        self.resources[rid.lower()] = {
            "id": rid,
            "name": parts[-1],
            "type": f"{parts[i + 1]}/{parts[i + 2]}",
            "location": location,
            "tags": dict(tags),
            "sku": sku,
            "createdTime": "2030-01-01T00:00:00.0000000Z",
            "properties": {"provisioningState": "Succeeded", **(props or {})},
            "attached_to": attached_to,
        }

    def _scale(self, vmss: dict[str, Any], capacity: int, *, ready: bool = False) -> None:
        inst = vmss["instances"]
        live = [i for i, v in inst.items() if v["state"] != "Deleting"]
        while len(live) < capacity:
            iid = str(vmss["next"])
            vmss["next"] += 1
            inst[iid] = {
                "state": "Succeeded" if ready else "Creating",
                "dataDisks": [],
                "customData": vmss.get("custom_data"),
            }
            live.append(iid)
        for iid in sorted(live, key=int, reverse=True)[: max(0, len(live) - capacity)]:
            inst[iid]["state"] = "Deleting"
        vmss["sku"]["capacity"] = capacity

    # -- answers
    def _op(self, target: tuple[str, Any]) -> dict[str, str]:
        op = f"op{next(self._ids)}"
        self.ops[op] = target
        return {
            "Azure-AsyncOperation": f"{BASE}/subscriptions/{self.sub}/providers/"
            f"Microsoft.Resources/operationStatuses/{op}?api-version=2025-04-01",
            "Location": f"{BASE}/subscriptions/{self.sub}/providers/"
            f"Microsoft.Resources/operationResults/{op}?api-version=2025-04-01",
            "Retry-After": "0",
        }

    def _op_done(self, target: tuple[str, Any]) -> str:
        kind, key = target
        if kind == "deployment":
            d = self.deployments.get(key)
            if d is None:
                return "Succeeded"
            return {"Accepted": "Accepted", "Running": "Running", "Deleting": "Running"}.get(
                d["state"], d["state"]
            )
        if kind == "group":
            return "Succeeded" if key not in self.groups else "Running"
        if kind == "resource":
            r = self.resources.get(key)
            if r is None:
                return "Succeeded"
            busy = r["properties"]["provisioningState"] in ("Deleting", "Updating") or any(
                v["state"] in ("Creating", "Deleting", "Updating")
                for v in r.get("instances", {}).values()
            )
            return "Running" if busy else "Succeeded"
        return "Succeeded"

    def _route(
        self, method: str, path: str, q: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        parts = path.strip("/").split("/")
        low = [p.lower() for p in parts]
        err = _err
        # Long-running operation status / result
        if "operationstatuses" in low or "operationresults" in low:
            target = self.ops[parts[-1]]
            self._advance(target)
            status = self._op_done(target)
            if "operationstatuses" in low:
                return 200, {"status": status}, {}
            return (202, None, {"Retry-After": "0"}) if status == "Running" else (200, None, {})
        if low == ["providers", "microsoft.resourcegraph", "resources"] and method == "POST":
            return self._graph(body)
        assert low[0] == "subscriptions" and parts[1] == self.sub, path
        if len(low) == 3 and low[2] == "resourcegroups" and method == "GET":
            out = [
                _group_json(g, with_tags=False)
                for g in self.groups.values()
                if _match(g["tags"], q.get("$filter"))
            ]
            return 200, {"value": out}, {}
        if len(low) == 3 and low[2] == "resources" and method == "GET":
            return 200, self._list(None, q), {}
        if len(low) == 6 and low[2:5] == ["providers", "microsoft.resources", "deploymentstacks"]:
            if method == "PUT":
                self.stacks[low[5]] = body
                return 200, {"id": path, "name": parts[5], **body}, {}
            if method == "DELETE":
                return (200, None, {}) if self.stacks.pop(low[5], None) else err(404, "NotFound")
            return err(405, "MethodNotAllowed")
        if len(low) >= 4 and low[2] == "resourcegroups":
            group = low[3]
            if len(low) == 4:
                return self._group(method, parts[3], body)
            if len(low) == 5 and low[4] == "resources":
                if group not in self.groups:
                    return err(404, "ResourceGroupNotFound")
                return 200, self._list(group, q), {}
            if low[4:7] == ["providers", "microsoft.resources", "deployments"]:
                return self._deployment(method, group, parts[7], low[8:], body)
            if low[4] == "providers":
                return self._resource(method, path, low, q, body)
        return err(404, "NotFound")

    def _group(self, method: str, name: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        key = name.lower()
        g = self.groups.get(key)
        if method == "PUT":
            new = g is None
            self.groups[key] = {
                "id": f"/subscriptions/{self.sub}/resourceGroups/{name}",
                "name": name,
                "location": body["location"],
                "managedBy": body.get("managedBy"),
                "tags": body.get("tags") or {},
                "properties": {"provisioningState": "Succeeded"},
            }
            return (201 if new else 200), _group_json(self.groups[key]), {}
        if g is None:
            return _err(404, "ResourceGroupNotFound")
        if method == "GET":
            return 200, _group_json(g), {}
        if method == "DELETE":
            g["properties"]["provisioningState"] = "Deleting"
            return 202, None, self._op(("group", key))
        return _err(405, "MethodNotAllowed")

    def _deployment(
        self, method: str, group: str, name: str, rest: list[str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        key = (group, name)
        d = self.deployments.get(key)
        if group not in self.groups:
            return _err(404, "ResourceGroupNotFound")
        if rest == ["cancel"] and method == "POST":
            if d is None or d["state"] not in ACTIVE:
                return _err(409, "DeploymentCannotBeCancelled")
            d["state"] = "Canceled"
            return 204, None, {}
        if method == "PUT":
            if d is not None and d["state"] in ACTIVE:
                return _err(409, "DeploymentActive")
            self.deployments_accepted[name] += 1
            self.deployments[key] = {
                "name": name,
                "body": body,
                "state": "Accepted",
                "timestamp": "2030-01-01T00:00:00.5Z",
            }
            return 201, self._dep_json(group, key), self._op(("deployment", key))
        if d is None:
            return _err(404, "DeploymentNotFound")
        if method == "HEAD":
            return 204, None, {}
        if method == "GET":
            return 200, self._dep_json(group, key), {}
        if method == "DELETE":
            if d["state"] in ACTIVE:
                return _err(409, "DeploymentActive")
            d["state"] = "Deleting"
            return 202, None, self._op(("deployment", key))
        return _err(405, "MethodNotAllowed")

    def _dep_json(self, group: str, key: tuple[str, str]) -> dict[str, Any]:
        d = self.deployments[key]
        params = d["body"]["properties"].get("parameters") or {}
        return {
            "id": f"/subscriptions/{self.sub}/resourceGroups/{group}/providers/"
            f"Microsoft.Resources/deployments/{key[1]}",
            "name": key[1],
            "type": "Microsoft.Resources/deployments",
            "properties": {
                "provisioningState": d["state"],
                "timestamp": d["timestamp"],
                "mode": "Incremental",
                "parameters": {
                    k: {"type": type(v["value"]).__name__, "value": v["value"]}
                    for k, v in params.items()
                },
                "outputs": d.get("outputs"),
            },
        }

    def _list(self, group: str | None, q: dict[str, str]) -> dict[str, Any]:
        flt = q.get("$filter")
        expand = set((q.get("$expand") or "").split(","))
        # ARM leaves tags out when the filter names a tag value.
        tagged_value = bool(flt and "tagValue" in flt)
        out = []
        one = re.fullmatch(r"tagName eq 'ClusterId' and tagValue eq '([^']*)'", flt or "")
        if group is not None and one:
            # One cluster's resources in one group: from the cluster index (a group of a
            # thousand clusters is not walked for each observation).
            listed = [
                r
                for rid, r in self.resources.by_cluster.get(one.group(1), {}).items()
                if _rg(rid) == group
            ]
        elif group is not None:
            listed = self.resources.in_group(group)
        elif one:
            listed = self.resources.by_cluster.get(one.group(1), {}).values()
        else:
            listed = self.resources.values()
        for r in list(listed):
            if not _match(r["tags"], flt, r["type"]):
                continue
            item = {k: r[k] for k in ("id", "name", "type", "location") if k in r}
            if r.get("sku"):
                item["sku"] = dict(r["sku"])
            if not tagged_value:
                item["tags"] = r["tags"]
            if "provisioningState" in expand:
                item["provisioningState"] = r["properties"]["provisioningState"]
            if "createdTime" in expand:
                item["createdTime"] = r["createdTime"]
            out.append(item)
        return {"value": out}

    def _resource(
        self, method: str, path: str, low: list[str], q: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        # .../providers/<ns>/<type>/<name>[/<child...>]
        i = low.index("providers")
        base_id = "/" + "/".join(path.strip("/").split("/")[: i + 4])
        child = low[i + 4 :]
        r = self.resources.get(base_id.lower())
        if r is None:
            return _err(404, "ResourceNotFound")
        rtype = r["type"].lower()
        if rtype == "microsoft.compute/virtualmachinescalesets" and child:
            if child == ["virtualmachines"] and method == "GET":
                return 200, {"value": self._instances(r, q)}, {}
            if child == ["networkinterfaces"] and method == "GET":
                return 200, {"value": self._vmss_nics(r)}, {}
            if len(child) == 2 and child[0] == "virtualmachines":
                inst = r["instances"].get(child[1])
                if inst is None:
                    return _err(404, "NotFound")
                if method == "GET":
                    return 200, self._instance(r, child[1], q), {}
                if method == "PUT":  # scale-set instances have no PATCH
                    if inst["state"] != "Succeeded":
                        return _err(409, "OperationNotAllowed")
                    name = f"{r['name']}_{child[1]}"
                    disks = body["properties"]["storageProfile"].get("dataDisks") or []
                    inst["dataDisks"] = _made(disks, name, r["id"])
                    inst["state"] = "Updating"
                    return 202, None, self._op(("resource", base_id.lower()))
                return _err(405, "MethodNotAllowed")
            if child == ["delete"] and method == "POST":
                ids = body["instanceIds"]
                for iid in ids:
                    r["instances"][iid]["state"] = "Deleting"
                r["sku"]["capacity"] -= len(ids)
                return 202, None, self._op(("resource", base_id.lower()))
            return _err(404, "NotFound")
        if child:
            return _err(404, "NotFound")
        if method == "GET":
            return 200, self._res_json(r, q), {}
        if method == "PATCH":
            model = (body.get("properties") or {}).get("virtualMachineProfile")
            if model is not None:
                assert rtype == "microsoft.compute/virtualmachinescalesets", rtype
                assert set(model) == {"osProfile"} and set(model["osProfile"]) == {"customData"}
                r["custom_data"] = model["osProfile"]["customData"]  # before new instances
            if body.get("sku", {}).get("capacity") is not None:
                self._scale(r, int(body["sku"]["capacity"]))
            storage = (body.get("properties") or {}).get("storageProfile")
            if storage is not None:
                if r["properties"]["provisioningState"] != "Succeeded":
                    return _err(409, "OperationNotAllowed")
                # A PATCH replaces arrays: a disk left out of the list is detached.
                disks = _made(storage.get("dataDisks") or [], r["name"], r["id"])
                r["properties"]["storageProfile"]["dataDisks"] = disks
                r["properties"]["provisioningState"] = "Updating"
            return 200, self._res_json(r, q), self._op(("resource", base_id.lower()))
        if method == "DELETE":
            holder = r.get("attached_to")
            if holder and holder.lower() in self.resources:
                return _err(409, "NicInUse" if "networkinterfaces" in rtype else "InUse")
            r["properties"]["provisioningState"] = "Deleting"
            for inst in r.get("instances", {}).values():
                inst["state"] = "Deleting"
            return 202, None, self._op(("resource", base_id.lower()))
        return _err(405, "MethodNotAllowed")

    def _res_json(self, r: dict[str, Any], q: dict[str, str]) -> dict[str, Any]:
        out = {k: r[k] for k in ("id", "name", "type", "location", "tags")}
        if r.get("sku"):
            out["sku"] = dict(r["sku"])
        out["properties"] = dict(r["properties"])
        if q.get("$expand") == "instanceView" and r["type"].endswith("virtualMachines"):
            out["properties"]["instanceView"] = _view(r["properties"]["provisioningState"])
        return out

    def _instances(self, vmss: dict[str, Any], q: dict[str, str]) -> list[dict[str, Any]]:
        return [self._instance(vmss, iid, q) for iid in sorted(vmss["instances"], key=int)]

    def _instance(self, vmss: dict[str, Any], iid: str, q: dict[str, str]) -> dict[str, Any]:
        inst = vmss["instances"][iid]
        name = f"{vmss['name']}_{iid}"
        props: dict[str, Any] = {
            "latestModelApplied": True,
            "provisioningState": inst["state"],
            "timeCreated": f"2030-01-01T00:01:{int(iid):02d}.0000000+00:00",
            "hardwareProfile": {},
            "storageProfile": _storage(f"{name}_OsDisk", inst["dataDisks"]),
        }
        if q.get("$expand") == "instanceView":
            props["instanceView"] = _view(inst["state"])
        return {
            "instanceId": iid,
            "name": name,
            "id": f"{vmss['id']}/virtualMachines/{iid}",
            "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
            "location": vmss["location"],
            "tags": dict(vmss["tags"]),
            "sku": {"name": vmss["sku"]["name"], "tier": vmss["sku"]["tier"]},
            "properties": props,
        }

    def _vmss_nics(self, vmss: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                "id": f"{vmss['id']}/virtualMachines/{iid}/networkInterfaces/nic",
                "properties": {
                    "virtualMachine": {"id": f"{vmss['id']}/virtualMachines/{iid}"},
                    "ipConfigurations": [{"properties": {"privateIPAddress": f"10.0.1.{iid}"}}],
                },
            }
            for iid in vmss["instances"]
        ]

    def _graph(self, body: Any) -> tuple[int, Any, dict[str, str]]:
        """Azure Resource Graph, for the queries the provisioner sends (their KQL is not
        interpreted: the fake answers what each one asks, with its paging)."""
        assert self.sub in body["subscriptions"], body
        return _graph_page(self.graph_rows(body["query"]), body)

    def graph_rows(self, query: str) -> list[dict[str, Any]]:
        from shared.adapters.arm.bulk import UNHEALTHY_QUERY
        from shared.adapters.arm.shards import CLUSTERS_QUERY, GROUPS_QUERY

        if query == GROUPS_QUERY:
            return [
                {"workspaceId": g["tags"].get("WorkspaceId", ""), "subscriptionId": self.sub}
                for g in self.groups.values()
                if g["tags"].get("Vendor") == "sparkplane"
            ]
        if query == CLUSTERS_QUERY:
            return [
                {"clusterId": r["tags"]["ClusterId"], "subscriptionId": self.sub}
                for r in self.find("virtualMachines")
                if r["tags"].get("Vendor") == "sparkplane" and r["tags"].get("ClusterId")
            ]
        assert query == UNHEALTHY_QUERY, query
        bad = set()
        for r in self.resources.values():
            cid = (r.get("tags") or {}).get("ClusterId")
            rtype = r["type"].lower()
            if not cid or (r.get("tags") or {}).get("Vendor") != "sparkplane":
                continue
            vm_failed = (
                rtype == "microsoft.compute/virtualmachines"
                and r["properties"]["provisioningState"] == "Failed"
            )
            instances = r.get("instances", {}).values()
            if vm_failed or any(i["state"] == "Failed" for i in instances):
                bad.add(cid)
        return [{"clusterId": c} for c in sorted(bad)]

    # -- test helpers
    def take(self) -> list[Rec]:
        with self._lock:
            out, self.requests = self.requests, []
        return out

    def find(self, type_suffix: str) -> list[dict[str, Any]]:
        return [r for r in self.resources.values() if r["type"].endswith(type_suffix)]


def _graph_page(rows: list[dict[str, Any]], body: Any) -> tuple[int, Any, dict[str, str]]:
    opts = body.get("options") or {}
    start = int(opts.get("$skipToken") or 0)
    top = int(opts.get("$top") or 1000)
    page = rows[start : start + top]
    out: dict[str, Any] = {"totalRecords": len(rows), "count": len(page), "data": page}
    if start + top < len(rows):
        out["$skipToken"] = str(start + top)
    return 200, out, {}


class FakeArms(HttpTransport):
    """Several subscriptions, each its own FakeArm (its own resources and request limits),
    behind one transport: a request goes to the subscription its URL names; a Resource Graph
    query is answered from every subscription it lists, in one paged result."""

    def __init__(self, arms: list[FakeArm]) -> None:
        self.arms = {a.sub: a for a in arms}

    def open(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> FakeArms:
        return self

    def __exit__(self, *args: Any) -> None: ...

    def sleep(self, duration: float) -> None:
        pass

    def send(self, request: Any, **kwargs: Any) -> RestRequestsTransportResponse:
        path = urlsplit(request.url).path
        m = re.search(r"/subscriptions/([^/]+)", path)
        if m:
            return self.arms[m.group(1)].send(request, **kwargs)
        body = json.loads(request.content)
        rows: list[dict[str, Any]] = []
        self.arms[body["subscriptions"][0]].counts["graph"] += 1  # one query, whatever it spans
        for sub in body["subscriptions"]:
            rows.extend(self.arms[sub].graph_rows(body["query"]))
        status, payload, headers = _graph_page(rows, body)
        r = requests.Response()
        r.status_code = status
        r.raw = io.BytesIO(json.dumps(payload).encode())
        r.headers = CaseInsensitiveDict({"Content-Type": "application/json", **headers})
        r.url = request.url
        return RestRequestsTransportResponse(request=request, internal_response=r)

    def tick(self, n: int = 1) -> None:
        for a in self.arms.values():
            a.tick(n)


def sharded_provisioner(
    arms: FakeArms, *, clock: Callable[[], float] = time.time, store: Any = None, **settings: Any
) -> Any:
    """A ShardedArmProvisioner over the subscriptions of `arms` (the first is the one of the
    single-subscription setting; `store`: as arm_provisioner's)."""
    from shared.adapters.arm.shards import ShardedArmProvisioner
    from shared.settings import Settings

    subs = list(arms.arms)
    s = Settings(
        arm_subscription_id=subs[0],
        arm_subscription_ids=",".join(subs[1:]),
        arm_endpoint=BASE,
        arm_platform_resource_id=f"/subscriptions/{subs[0]}/resourceGroups/platform/providers/"
        "Microsoft.Web/sites/sp",
        **settings,
    )
    return ShardedArmProvisioner.from_settings(
        s, credential=FakeCredential(), transport=arms, clock=clock, store=store
    )


def _rg(resource_id: str) -> str:
    parts = resource_id.strip("/").split("/")
    return parts[3].lower()


def _storage(os_disk: str, data_disks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "osDisk": {
            "osType": "Linux",
            "name": os_disk,
            "createOption": "FromImage",
            "caching": "ReadWrite",
            "managedDisk": {"storageAccountType": "StandardSSD_LRS"},
            "diskSizeGB": 30,
        },
        "dataDisks": [dict(d) for d in data_disks],
    }


def _made(disks: list[dict[str, Any]], vm_name: str, vm_id: str) -> list[dict[str, Any]]:
    """A data disk list as ARM keeps it: LUNs unique, new empty disks made (named, with a
    managed disk id), the ones already there kept as they are."""
    luns = [d["lun"] for d in disks]
    assert len(luns) == len(set(luns)), f"two disks on one LUN: {luns}"
    rgp = vm_id.split("/providers/")[0] + "/providers"
    out = []
    for d in disks:
        d = json.loads(json.dumps(d))
        managed = d.setdefault("managedDisk", {})
        if "id" not in managed:
            assert d["createOption"] == "Empty" and d["diskSizeGB"] <= 32767, d
            d["name"] = f"{vm_name}_lun_{d['lun']}_{next(_DISK_IDS)}"
            managed["id"] = f"{rgp}/Microsoft.Compute/disks/{d['name']}"
            d.setdefault("caching", "None")
            d.setdefault("toBeDetached", False)
        out.append(d)
    return out


_DISK_IDS = itertools.count(1)


def _view(state: str) -> dict[str, Any]:
    power = {
        "Succeeded": "running",
        "Updating": "running",
        "Creating": "starting",
        "Deleting": "stopping",
    }
    return {
        "statuses": [
            {"code": f"ProvisioningState/{state.lower()}"},
            {"code": f"PowerState/{power.get(state, 'unknown')}"},
        ]
    }


def _match(tags: dict[str, str], flt: str | None, rtype: str = "") -> bool:
    if not flt:
        return True
    m = re.fullmatch(r"tagName eq '([^']*)'(?: and tagValue eq '([^']*)')?", flt)
    if m:
        name, value = m.groups()
        return name in tags and (value is None or tags[name] == value)
    m = re.fullmatch(r"resourceType eq '([^']*)'", flt)
    if m:
        return rtype.lower() == m.group(1).lower()
    raise AssertionError(f"filter the fake does not know: {flt}")


def _group_json(g: dict[str, Any], *, with_tags: bool = True) -> dict[str, Any]:
    out = {k: v for k, v in g.items() if k != "tags" or with_tags}
    return {k: v for k, v in out.items() if v is not None}


def _err(status: int, code: str) -> tuple[int, Any, dict[str, str]]:
    return status, {"error": {"code": code, "message": f"{code} (fake ARM)"}}, {}


class FakeCredential:
    def __init__(self) -> None:
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        assert scopes == ("https://management.azure.com/.default",)
        return AccessToken("fake-token", 4_102_444_800)


def arm_provisioner(
    arm: FakeArm, *, clock: Callable[[], float] = time.time, store: Any = None, **settings: Any
) -> Any:
    """An ArmProvisioner with the repository's templates and cloud-init, sending to `arm`
    through the real SDK clients (`store`: where it keeps worker slots and ready reports)."""
    from shared.adapters.arm import ArmProvisioner
    from shared.settings import Settings

    s = Settings(
        arm_subscription_id=SUB,
        arm_endpoint=BASE,
        arm_platform_resource_id=f"/subscriptions/{SUB}/resourceGroups/platform/providers/"
        "Microsoft.Web/sites/sp",
        **settings,
    )
    return ArmProvisioner.from_settings(
        s, credential=FakeCredential(), transport=arm, clock=clock, store=store
    )


class FakeAgents:
    """The driver agents of the clusters in `arm`, as far as readiness goes: a driver whose
    VM runs is ready at once, with an executor for each running instance of its scale set
    (what shared/agent.py reports once Spark Connect answers and as executors register).
    `ready()` lists the reports that changed since the last call: (cluster id, driver node
    id, executors)."""

    def __init__(self, arm: FakeArm) -> None:
        self.arm = arm
        self.silent: set[str] = set()  # clusters whose agent never reports (a broken node)
        self._sent: dict[str, tuple[str, int]] = {}

    def ready(self) -> list[tuple[str, str, int]]:
        out = []
        with self.arm._lock:
            for vm in self.arm.find("/virtualMachines"):
                cid = vm["tags"].get("ClusterId")
                if not vm["name"].endswith("-driver") or cid is None or cid in self.silent:
                    continue
                if vm["properties"]["provisioningState"] not in ("Succeeded", "Updating"):
                    continue
                workers = f"{vm['id'].rsplit('/virtualMachines/', 1)[0]}/virtualMachineScaleSets/"
                vmss = self.arm.resources.get(
                    f"{workers}{vm['name'][: -len('-driver')]}-workers".lower()
                )
                live = (vmss or {}).get("instances", {}).values()
                report = (
                    vm["name"],
                    sum(1 for i in live if i["state"] in ("Succeeded", "Updating")),
                )
                if self._sent.get(cid) != report:
                    self._sent[cid] = report
                    out.append((cid, *report))
        return out

    def heartbeat(self, utilization: Any) -> None:
        """The changed reports as they reach the control plane: a `ready` heartbeat with the
        cluster's agent token, to the heartbeat service (shared/services/utilization.py)."""
        from shared.services.auth import Principal

        for cid, node_id, executors in self.ready():
            agent = Principal("", "agent", "fake-agent", role="agent", scope=cid)
            body = {"cluster_id": cid, "ready": {"node_id": node_id, "executors": executors}}
            utilization.heartbeat(agent, body)

    def report(self, prov: Any, now_ms: int | None = None) -> None:
        """Hand the changed reports to the provisioner (ports.ReadyReports)."""
        at = int(time.time() * 1000) if now_ms is None else now_ms
        for cid, node_id, executors in self.ready():
            prov.ready_reported(cid, node_id, executors, at)
