"""The ARM provisioner: the parts of shared/adapters/arm/ put together (the layout in Azure and
the mapping of ARM states to nodes: shared/adapters/arm/__init__.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from shared.adapters.arm.base import ROOT, _Seen, cluster_deployment
from shared.adapters.arm.bulk import BulkMixin
from shared.adapters.arm.customdata import sanitize_tags
from shared.adapters.arm.disks import DisksMixin
from shared.adapters.arm.nodebook import NodeBook
from shared.adapters.arm.observe import ObserveMixin
from shared.adapters.arm.requests import ACTIVE_DEPLOYMENT, COMPUTE, _group_of
from shared.adapters.arm.throttle import ArmThrottle
from shared.adapters.arm.workers import POOLS_UNSUPPORTED, WorkersMixin
from shared.adapters.arm.workspaces import WorkspacesMixin
from shared.domain.azure_nodes import (
    NODE_TYPES,
    READY_TIMEOUT_S,
    SPARK_VERSIONS,
    ReadyReport,
    driver_vm_name,
)
from shared.ports import (
    Node,
    NodeRequest,
    NodeType,
    PoolNode,
    PoolRequest,
    ProvisionerUnsupported,
    SparkVersion,
    Store,
)

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger("sparkplane.arm")


class ArmProvisioner(WorkspacesMixin, WorkersMixin, ObserveMixin, DisksMixin, BulkMixin):
    """`Provisioner` on Azure Resource Manager, plus the workspace operations of the admin
    endpoints (`create_workspace`, `workspace_status`, `delete_workspace`), and
    `ready_reported` (ports.ReadyReports: the driver agents' readiness)."""

    def __init__(
        self,
        *args: Any,
        store: Store | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        """`store`: where the worker slots and ready reports are kept, shared by every
        instance of the app (shared/adapters/arm/nodebook.py); the other arguments: ArmBase's."""
        super().__init__(*args, **kwargs)
        self.book = NodeBook(store)
        self.ready_timeout_s = ready_timeout_s

    @classmethod
    def from_settings(
        cls,
        s: Settings,
        *,
        credential: Any = None,
        clock: Callable[[], float] = time.time,
        store: Store | None = None,
        throttle: ArmThrottle | None = None,
        **client_kwargs: Any,
    ) -> ArmProvisioner:
        """Clients for `s.arm_endpoint` with the app's managed identity (`DefaultAzureCredential`)
        unless a credential is given; `client_kwargs` go to both clients (tests pass
        `transport=`). Both send through one `ArmThrottle` (the subscription's request budget)
        on `clock`. `store`: the app's (the worker slots and ready reports live there)."""
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
        throttle = throttle or ArmThrottle(clock)  # shared by the subscriptions' shards
        client_kwargs.update(throttle.hooks())
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
            throttle=throttle,
            clock=clock,
            store=store,
        )

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
        # Creates go at the rate the subscription's writes allow, FIFO per workspace.
        self.throttle.admit(self.subscription_id, req.workspace_id, req.cluster_id)
        self._remember(req.cluster_id, group)
        seen = self._recent(req.cluster_id)
        workers = seen.capacity if seen is not None and seen.vmss is not None else 0
        self._deploy_cluster(req, group, workers)
        name = driver_vm_name(req.cluster_id)
        return Node(name, "driver", "STARTING", self._now_ms(), instance_id=name)

    def ready_reported(self, cluster_id: str, node_id: str, executors: int, at_ms: int) -> None:
        """The driver's agent reported ready (ports.ReadyReports): kept for observe(), which
        reports the driver RUNNING from it (no ARM request)."""
        self.book.report_ready(cluster_id, ReadyReport(node_id, executors, at_ms))

    def stop_cluster(self, cluster_id: str) -> None:
        """Deletes the cluster's deployment and resources (compute first), and always its node
        book: a stopped cluster's slots and ready report mean nothing to a later start, and an
        orphan's (whose document is gone) would otherwise never be deleted, since nothing
        observes it again."""
        try:
            self._stop_cluster(cluster_id)
        finally:
            self.book.forget(cluster_id)

    def _stop_cluster(self, cluster_id: str) -> None:
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
