"""Workers on ARM: the cluster's VM scale set, sized with PATCHes of its capacity and thinned
with its `delete` action (the sizing rules: shared/domain/azure_nodes.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from shared.adapters.arm.customdata import CustomDataMixin
from shared.adapters.arm.observe import ObserveMixin
from shared.adapters.arm.requests import COMPUTE_API
from shared.domain.azure_nodes import WorkerBook, book_add, book_drop, capacity_after
from shared.ports import Node, NodeRequest, ProvisionerUnsupported

log = logging.getLogger("sparkplane.arm")

POOLS_UNSUPPORTED = (
    "Instance pools are not available with the Azure Resource Manager provisioner yet: a warm "
    "pool VM would need a node agent that learns its cluster role after boot, and today a node "
    "gets its role when it is created. Create clusters without instance_pool_id (and without "
    "driver_instance_pool_id)."
)


class WorkersMixin(CustomDataMixin, ObserveMixin):
    def add_workers(self, req: NodeRequest, count: int) -> list[Node]:
        """Hands out `count` worker slots (their node ids: shared/domain/azure_nodes.py) and
        raises the scale set's capacity by `count`; the instances ARM then makes are matched
        to the slots by observe(). While the cluster deployment is still making the scale set,
        the slots are kept and the first observe() that finds the set raises its capacity.

        With `req.agent_env` (clusters with autoscaling local storage) the same PATCH gives
        the scale set's model a customData whose workers run the node agent
        (`_worker_custom_data`); new instances boot with it, the ones there keep theirs (a
        scale set's customData reaches only the instances created after it changed). Such
        workers wait for the driver's address (none is started before). Without, the model
        keeps the customData it has: the deployment's, whose workers run no agent."""
        if req.pool is not None:
            raise ProvisionerUnsupported(POOLS_UNSUPPORTED)
        group = self.group_name(req.workspace_id)
        self._remember(req.cluster_id, group)
        seen = self._view(req.cluster_id)
        if count <= 0:
            return []
        vmss = seen.vmss
        if vmss is None and not seen.deploying:
            # No scale set and no deployment making one: observe() reports the cluster's
            # driver lost, and a redeploy cannot mend it (a VM's customData is immutable).
            return []
        if vmss is not None and (vmss.provisioning_state or "") == "Deleting":
            return []
        custom = None
        if req.agent_env:
            if vmss is None or not seen.driver_ip:
                # The workers' customData names the driver; without its address yet (or any
                # more), no worker is added and the next reconcile asks again.
                log.info("%s: the driver has no address yet; workers wait", req.cluster_id)
                return []
            custom = self._worker_custom_data(req, seen.driver_ip)
        now = self._now_ms()
        new: list[str] = []

        def step(book: WorkerBook) -> WorkerBook:
            out = book_add(book, req.cluster_id, count, now)
            new[:] = [s.node_id for s in out.slots[len(book.slots) :]]
            return out

        # The slots first (an observe() meanwhile sees them, not capacity nobody asked for);
        # while the deployment makes the set, observe() raises the capacity they need.
        self.book.change(req.cluster_id, step)
        if vmss is None:
            return [Node(node_id, "worker", "STARTING", now) for node_id in new]
        sent = False
        try:
            sent = self._set_capacity(
                seen, capacity_after(seen.capacity, count), custom_data=custom
            )
        finally:
            if not sent:
                # Busy (409) or throttled: no worker was started, so the slots go again and
                # the next reconcile asks anew (with the customData, which observe() would not
                # give).
                self.book.change(req.cluster_id, lambda b: book_drop(b, new))
        if not sent:
            return []
        return [Node(node_id, "worker", "STARTING", now) for node_id in new]

    def remove_workers(self, cluster_id: str, node_ids: Sequence[str]) -> None:
        """Deletes the scale-set instances of the given workers (which lowers the capacity);
        a worker may be named by its node id or its instance's name. Pending slots (no
        instance yet) go first, by lowering the capacity, and alone: mixing a capacity PATCH
        with an instance delete would let the scale set pick its own victims. What is left is
        removed by the next reconcile.

        Graceful decommission happens on the node: the scale set's terminate notification
        (Scheduled Events) gives the node agent time to decommission its Spark worker."""
        seen = self._view(cluster_id)
        waiting = {s.node_id for s in self.book.slots(cluster_id).pending}
        pending = [n for n in node_ids if n in waiting]
        if pending:
            self.book.change(cluster_id, lambda b: book_drop(b, pending))
            if seen.vmss is not None:
                self._set_capacity(seen, capacity_after(seen.capacity, -len(pending)))
            return
        if seen.vmss is None:
            return
        instance_ids = list(
            dict.fromkeys(seen.instances[n] for n in node_ids if n in seen.instances)
        )
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
