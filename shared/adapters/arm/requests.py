"""ARM requests: the api-versions, the generic request helpers every part of the provisioner
sends through, and the parsing of what ARM answers (resource ids, times, instance views)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.rest import HttpRequest
from azure.mgmt.resource.deployments.models import (
    Deployment,
    DeploymentParameter,
    DeploymentProperties,
)

if TYPE_CHECKING:
    from azure.mgmt.resource.deployments import DeploymentsMgmtClient
    from azure.mgmt.resource.resources import ResourceManagementClient

import logging

log = logging.getLogger("sparkplane.arm")

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


ACTIVE_DEPLOYMENT = {"Accepted", "Running", "Creating", "Created", "Ready", "Updating", "Waiting"}


@dataclass
class _Res:
    id: str
    name: str
    type: str  # lower-cased
    provisioning_state: str | None
    created_ms: int
    sku: dict[str, Any] | None = None


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


class ArmRequests:
    """The two management clients and the helpers every request goes through."""

    def __init__(
        self,
        resources: ResourceManagementClient,
        deployments: DeploymentsMgmtClient,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rm = resources
        self.dm = deployments
        self._clock = clock
        self._lock = threading.Lock()
        self._apis: dict[str, str] = dict(API_VERSIONS)

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

    def _deployment_state(self, group: str, name: str) -> str | None:
        dep = self._get_deployment(group, name)
        return dep.properties.provisioning_state if dep and dep.properties else None

    def _get_deployment(self, group: str, name: str) -> Any:
        try:
            return self.dm.deployments.get(group, name)
        except ResourceNotFoundError:
            return None

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
