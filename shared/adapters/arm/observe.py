"""observe(): what ARM reports of a cluster (its deployment, driver VM, scale set and
instances) as nodes; the table in shared/adapters/arm/__init__.py says how."""

from __future__ import annotations

from dataclasses import replace

from azure.core.exceptions import HttpResponseError

from shared.adapters.arm.base import ArmBase, _Seen, cluster_deployment
from shared.adapters.arm.disks import _disk_attrs
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
from shared.domain.azure_nodes import node_status, pending_slots
from shared.ports import Node, NodeStatus

# The reads of one observation of a running cluster (deployment, resource listing, driver VM,
# its NIC, the scale set's instances and their NICs).
OBSERVE_READS = 6
# The Spark Connect port of a driver node (infra/bootstrap/cloud-init.yaml).
CONNECT_PORT = 15002


class ObserveMixin(ArmBase):
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

        # ---- the driver
        if vm is not None:
            seen.vm = vm
            driver = self._driver(vm)
            seen.driver_ip = driver.private_ip
            settled = dep_state is not None and not seen.deploying
            if settled and vmss is None and driver.status != "STOPPING":
                # The deployment is over and there is no scale set (it failed, or was
                # deleted): no worker can ever join, so the cluster is reported broken.
                driver = replace(driver, status="LOST")
            nodes.append(driver)
        elif seen.deploying:
            nodes.append(Node(f"{cluster_id}-driver-pending", "driver", "STARTING", dep_ms))
        elif dep_state == "Failed":
            nodes.append(Node(f"{cluster_id}-driver-pending", "driver", "LOST", dep_ms))

        # ---- the workers
        pending = 0
        if vmss is not None:
            seen.vmss = vmss
            seen.capacity = int((vmss.sku or {}).get("capacity") or 0)
            workers = self._workers(vmss, seen)
            nodes.extend(workers)
            pending = pending_slots(
                seen.capacity,
                [w.status for w in workers],
                set_deleting=(vmss.provisioning_state or "") == "Deleting",
            )
        elif seen.deploying and dep is not None and dep.properties:
            params = dep.properties.parameters or {}
            pending = int((params.get("workerCount") or {}).get("value") or 0)
        nodes.extend(
            Node(f"{cluster_id}-worker-pending-{i}", "worker", "STARTING", dep_ms)
            for i in range(pending)
        )

        # ---- what a termination left behind (NICs, disks, IPs without their VM)
        if vm is None and vmss is None and not seen.deploying:
            rest = [r for r in resources if r.type not in COMPUTE]
            if rest:
                deleting = all((r.provisioning_state or "") == "Deleting" for r in rest)
                status: NodeStatus = "STOPPING" if deleting else "LOST"
                nodes.append(Node(f"{cluster_id}-leftovers", "worker", status, 0))
        with self._lock:
            self._seen[cluster_id] = seen
        return nodes

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
            out.append(
                Node(
                    name,
                    "worker",
                    status,
                    start,
                    private_ip=ips.get(instance_id, ""),
                    instance_id=name,
                    attrs=_disk_attrs(props, str((v.get("sku") or {}).get("name") or set_size)),
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
