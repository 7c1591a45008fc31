"""Workers on ARM: the cluster's VM scale set, sized with PATCHes of its capacity and thinned
with its `delete` action (the sizing rules: shared/domain/azure_nodes.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from azure.core.exceptions import HttpResponseError
from azure.mgmt.resource.resources.models import GenericResource, Sku

from shared.adapters.arm.base import _Seen
from shared.adapters.arm.customdata import CustomDataMixin
from shared.adapters.arm.requests import COMPUTE_API
from shared.domain.azure_nodes import capacity_after
from shared.ports import Node, NodeRequest, ProvisionerUnsupported

log = logging.getLogger("sparkplane.arm")

POOLS_UNSUPPORTED = (
    "Instance pools are not available with the Azure Resource Manager provisioner yet: a warm "
    "pool VM would need a node agent that learns its cluster role after boot, and today a node "
    "gets its role when it is created. Create clusters without instance_pool_id (and without "
    "driver_instance_pool_id)."
)


class WorkersMixin(CustomDataMixin):
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
        self._set_capacity(seen, capacity_after(seen.capacity, count), custom_data=custom)
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
            self._set_capacity(seen, capacity_after(seen.capacity, -len(pending)))
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
        seen.capacity = capacity_after(seen.capacity, -len(instance_ids))

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
