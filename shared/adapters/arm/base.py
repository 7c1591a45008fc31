"""What every part of the ARM provisioner shares: its settings, the groups and observations it
remembers, and how it finds a cluster's group and resources again."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceNotFoundError

from shared.adapters.arm.requests import (
    ACTIVE_DEPLOYMENT,
    ArmRequests,
    _group_of,
    _q,
    _Res,
    _res,
)
from shared.adapters.arm.throttle import ArmThrottle
from shared.ports import Node

if TYPE_CHECKING:
    from azure.mgmt.resource.deployments import DeploymentsMgmtClient
    from azure.mgmt.resource.resources import ResourceManagementClient

ROOT = Path(__file__).resolve().parents[3]

WORKSPACE_DEPLOYMENT = "sparkplane-workspace"
# How long an observation is what add/remove_workers work from.
FRESH_S = 30.0


class WorkspaceNotReady(RuntimeError):
    """A cluster was asked for in a workspace whose network is not deployed (yet)."""


def cluster_deployment(cluster_id: str) -> str:
    return f"sparkplane-cluster-{cluster_id}"


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


class ArmBase(ArmRequests):
    """The provisioner's configuration and memory (groups, observations, workspaces)."""

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
        throttle: ArmThrottle | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(resources, deployments, clock=clock)
        # The subscription's request budget; the clients send through its hooks
        # (ArmProvisioner.from_settings installs them).
        self.throttle = throttle or ArmThrottle(clock)
        self.subscription_id = subscription_id
        # The subscriptions the bulk Resource Graph queries span (all of them when several
        # share the work: shared/adapters/arm/shards.py).
        self.graph_subscriptions = [subscription_id]
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
        self._templates: dict[str, Any] = {}
        self._groups: dict[str, str] = {}
        self._seen: dict[str, _Seen] = {}
        self._workspaces: dict[str, _Workspace] = {}

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

    def _locate(
        self, cluster_id: str, *, probe: bool = True
    ) -> tuple[str | None, list[_Res] | None]:
        """The cluster's group and, when finding it needed a query, what the query listed.
        `probe`: with nothing tagged yet, look for the cluster's deployment in every managed
        group (a read per group: only a termination, which must cancel it, does)."""
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
        if not probe:
            return None, []
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

    def observe(self, cluster_id: str) -> list[Node]:
        raise NotImplementedError  # shared/adapters/arm/observe.py
