"""observe(): what ARM reports of a cluster (its deployment, driver VM, scale set and
instances) as nodes; the table in shared/adapters/arm/__init__.py says how."""

from __future__ import annotations

import logging
from dataclasses import replace

from azure.core.exceptions import HttpResponseError
from azure.mgmt.resource.resources.models import GenericResource, Sku

from shared.adapters.arm.base import ArmBase, _Seen, cluster_deployment
from shared.adapters.arm.disks import _disk_attrs
from shared.adapters.arm.nodebook import NodeBook
from shared.adapters.arm.requests import (
    ACTIVE_DEPLOYMENT,
    COMPUTE,
    COMPUTE_API,
    VM,
    VMSS,
    VMSS_NIC_API,
    _first_ip,
    _ms,
    _Res,
    _statuses,
)
from shared.domain.azure_nodes import (
    NOT_READY,
    READY_TIMEOUT_S,
    VM_FAILED,
    Match,
    NodeFailure,
    WorkerBook,
    book_match,
    driver_ready_status,
    driver_vm_name,
    node_status,
    worker_ready_status,
)
from shared.ports import Node, NodeStatus

log = logging.getLogger("sparkplane.arm")

# The reads of one observation of a running cluster (deployment, resource listing, driver VM,
# its NIC, the scale set's instances and their NICs).
OBSERVE_READS = 6
# The Spark Connect port of a driver node (infra/bootstrap/cloud-init.yaml).
CONNECT_PORT = 15002
# A worker node's Spark web UI port (infra/bootstrap/cloud-init.yaml, spark-worker.service).
WORKER_UI_PORT = 8081


def _failed(node: Node, failure: NodeFailure) -> Node:
    """A LOST node with why (`failure`, `failure_kind`: temporary or permanent)."""
    attrs = {**node.attrs, "failure": failure.code, "failure_kind": failure.kind}
    return replace(node, attrs=attrs)


def _instance_key(worker: Node) -> str:
    """What a slot is matched to: the instance's name and creation time (Azure may give a new
    instance the id, and so the name, of one deleted before)."""
    return f"{worker.instance_id}@{worker.start_ms}"


class ObserveMixin(ArmBase):
    # The slots and ready reports (shared/adapters/arm/nodebook.py) and how long a driver may
    # take to report ready (ArmProvisioner sets both).
    book: NodeBook
    ready_timeout_s: float = READY_TIMEOUT_S

    def observe(self, cluster_id: str) -> list[Node]:
        if self.throttle.waiting(cluster_id):
            # Its create waits for admission: nothing of it is in ARM, and asking costs reads.
            return []
        # An observation of a running cluster is six reads: it starts when it can finish.
        priority = self.throttle.priority(cluster_id)
        self.throttle.need(self.subscription_id, "reads", OBSERVE_READS, priority)
        # A new cluster has nothing tagged and no known group: no nodes. (Another instance of
        # the app may have just started its deployment: the next start_driver is refused with
        # 409 DeploymentActive, and remembers the group.)
        group, listed = self._locate(cluster_id, probe=False)
        if group is None:
            with self._lock:
                self._seen[cluster_id] = _Seen(group=None, at=self._clock())
            return []
        dep = self._get_deployment(group, cluster_deployment(cluster_id))
        dep_state = dep.properties.provisioning_state if dep and dep.properties else None
        with self._lock:
            prev = self._seen.get(cluster_id)
        if dep_state in ACTIVE_DEPLOYMENT and listed is None and (prev is None or prev.vm is None):
            # A new cluster's deployment runs: its nodes are STARTING whatever it has made so
            # far, so its resources are not listed (one read per reconcile instead of six).
            resources = []
        else:
            resources = listed if listed is not None else self._tagged(group, cluster_id)
        seen = _Seen(group=group, at=self._clock(), deployment_state=dep_state)
        vm = next((r for r in resources if r.type == VM), None)
        vmss = next((r for r in resources if r.type == VMSS), None)
        nodes: list[Node] = []
        dep_ms = _ms(dep.properties.timestamp) if dep and dep.properties else 0
        now = self._now_ms()
        ready = self.book.ready(cluster_id)
        driver_id = driver_vm_name(cluster_id)

        # ---- the driver: its VM (named from the cluster id, so its id is known at once)
        driver_ready = False
        if vm is not None:
            seen.vm = vm
            driver = self._driver(vm)
            seen.driver_ip = driver.private_ip
            settled = dep_state is not None and not seen.deploying
            if settled and vmss is None and driver.status != "STOPPING":
                # The deployment is over and there is no scale set (it failed, or was
                # deleted): no worker can ever join, so the cluster is reported broken.
                driver = _failed(replace(driver, status="LOST"), VM_FAILED)
            else:
                reported = ready is not None and ready.node_id in ("", driver.node_id)
                status, failure = driver_ready_status(
                    driver.status,
                    reported=reported,
                    created_for_s=(now - driver.start_ms) / 1000,
                    ready_timeout_s=self.ready_timeout_s,
                )
                driver = replace(driver, status=status)
                if failure is not None:
                    driver = _failed(driver, failure)
                    if failure is NOT_READY:
                        log.warning(
                            "driver not ready in time",
                            extra={"cluster_id": cluster_id, "node_id": driver.node_id},
                        )
                driver_ready = status == "RUNNING"
            nodes.append(driver)
        elif seen.deploying:
            nodes.append(Node(driver_id, "driver", "STARTING", dep_ms, instance_id=driver_id))
        elif dep_state == "Failed":
            lost = Node(driver_id, "driver", "LOST", dep_ms, instance_id=driver_id)
            nodes.append(_failed(lost, VM_FAILED))

        # ---- the workers: scale-set instances, matched to the slots handed out
        executors = ready.executors if ready is not None and driver_ready else 0
        if vmss is not None:
            seen.vmss = vmss
            seen.capacity = int((vmss.sku or {}).get("capacity") or 0)
            set_deleting = (vmss.provisioning_state or "") == "Deleting"
            made = self._workers(vmss, seen)
            match = self._match(
                cluster_id,
                [(_instance_key(w), w.status) for w in made],
                capacity=seen.capacity,
                set_deleting=set_deleting,
                now=now,
            )
            if match.short and not set_deleting:
                # Slots asked for while the deployment made the scale set: the capacity they
                # need (add_workers sets it itself once the set exists).
                self._set_capacity(seen, seen.capacity + match.short)
            rank = 0
            for w in made:
                node_id = match.ids[_instance_key(w)]
                seen.instances[node_id] = seen.instances[w.instance_id]
                status, failure = worker_ready_status(
                    w.status,
                    driver_ready=driver_ready,
                    rank=rank,
                    executors=executors,
                    created_for_s=(now - w.start_ms) / 1000,
                )
                rank += w.status == "RUNNING"
                node = replace(w, node_id=node_id, status=status)
                nodes.append(_failed(node, failure) if failure is not None else node)
            pending = match.book.pending
        elif seen.deploying:
            params = (dep.properties.parameters or {}) if dep and dep.properties else {}
            count = int((params.get("workerCount") or {}).get("value") or 0)
            pending = self._match(
                cluster_id, [], capacity=count, set_deleting=False, now=now
            ).book.pending
        else:
            pending = []  # nothing will make them: the driver is reported lost
        nodes.extend(Node(s.node_id, "worker", "STARTING", s.asked_ms or dep_ms) for s in pending)

        # ---- what a termination left behind (NICs, disks, IPs without their VM)
        if vm is None and vmss is None and not seen.deploying:
            rest = [r for r in resources if r.type not in COMPUTE]
            if rest:
                deleting = all((r.provisioning_state or "") == "Deleting" for r in rest)
                left: NodeStatus = "STOPPING" if deleting else "LOST"
                nodes.append(Node(f"{cluster_id}-leftovers", "worker", left, 0))
        if not nodes:
            self.book.forget(cluster_id)  # no node left: a new start hands out new slots
        with self._lock:
            self._seen[cluster_id] = seen
        return nodes

    def _set_capacity(self, seen: _Seen, capacity: int, *, custom_data: str | None = None) -> bool:
        """PATCHes the scale set's capacity and, when given, its model's customData (one
        operation: the instances it adds are made from the new model). False: the set was
        busy (409) and nothing changed."""
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
            return False
        seen.capacity = capacity
        return True

    def _match(
        self,
        cluster_id: str,
        instances: list[tuple[str, NodeStatus]],
        *,
        capacity: int,
        set_deleting: bool,
        now: int,
    ) -> Match:
        """Matches the listed instances to the cluster's slots and saves the book if that
        changed it (shared/domain/azure_nodes.py `book_match`)."""
        out: list[Match] = []

        def step(book: WorkerBook) -> WorkerBook:
            out[:] = [
                book_match(
                    book,
                    cluster_id,
                    instances,
                    capacity=capacity,
                    set_deleting=set_deleting,
                    now_ms=now,
                )
            ]
            return out[0].book

        self.book.change(cluster_id, step)
        return out[0]

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
            ip = ips.get(instance_id, "")
            attrs = _disk_attrs(props, str((v.get("sku") or {}).get("name") or set_size))
            if ip:
                # How the driver's agent names the worker in its samples (its web UI).
                attrs["worker_ui_url"] = f"http://{ip}:{WORKER_UI_PORT}/"
            out.append(
                Node(
                    name,
                    "worker",
                    status,
                    start,
                    private_ip=ip,
                    instance_id=name,
                    attrs=attrs,
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
