"""Local storage on ARM: a node's local storage as observe() reports it, and the managed data
disks `grow_storage` attaches (how many and how large: shared/domain/azure_nodes.py)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.resource.resources.models import GenericResource

from shared.adapters.arm.base import ArmBase, _Seen
from shared.adapters.arm.requests import COMPUTE_API
from shared.domain import azure_nodes
from shared.domain.azure_nodes import attached, local_storage_bytes, max_data_disks, temp_disk_bytes
from shared.ports import ProvisionerUnsupported

log = logging.getLogger("sparkplane.arm")


class DataDiskLimitReached(ProvisionerUnsupported):
    """A node's local storage cannot grow further: its VM size takes no more data disks.
    Nothing was sent."""


def new_data_disks(
    disks: Sequence[Mapping[str, Any]],
    total_bytes: int,
    *,
    max_disks: int,
    node: str = "the node",
    vm_size: str = "",
    temp_bytes: int = 0,
) -> list[dict[str, Any]]:
    """shared.domain.azure_nodes.new_data_disks, its refusal as the port's failure kind."""
    try:
        return azure_nodes.new_data_disks(
            disks,
            total_bytes,
            max_disks=max_disks,
            node=node,
            vm_size=vm_size,
            temp_bytes=temp_bytes,
        )
    except azure_nodes.DataDiskLimit as e:
        raise DataDiskLimitReached(str(e)) from None


def _disk_attrs(props: Mapping[str, Any], vm_size: str) -> dict[str, str]:
    total = local_storage_bytes(props, vm_size)
    return {} if total is None else {"disk_total_bytes": str(total)}


class DisksMixin(ArmBase):
    def grow_storage(self, cluster_id: str, node_id: str, total_bytes: int) -> None:
        """Attaches empty managed data disks to the node's VM until its local storage (the VM
        size's temporary disk plus its data disks, what the node's agent reports) adds up to
        `total_bytes` (see `new_data_disks`): one GET of the VM's model, then (when it has too
        little) one PUT of the scale-set instance or PATCH of the driver VM, not waited for.
        The model lists a disk as soon as ARM accepted it, so a repeated call sends nothing.
        A node that is no VM (yet: a pending slot) or no longer is left alone; a VM busy with
        another operation (409) is grown by a later call. Raises DataDiskLimitReached when the
        VM size takes too few disks."""
        if total_bytes <= 0:
            return
        seen = self._view(cluster_id)
        target = self._storage_target(seen, node_id)
        if target is None:
            log.info(
                "%s of cluster %s is no VM (yet): its storage is not grown", node_id, cluster_id
            )
            return
        url, instance = target
        body = self._get_json(url, {"api-version": COMPUTE_API})
        if body is None:
            return
        props = body.setdefault("properties", {})
        if (props.get("provisioningState") or "") == "Deleting":
            return
        disks = attached(props) or []
        if instance:
            # The instance's own sku, else the scale set's (one size for all its instances).
            sku = body.get("sku") or (seen.vmss.sku if seen.vmss else None) or {}
            vm_size = str(sku.get("name") or "")
        else:
            vm_size = str((props.get("hardwareProfile") or {}).get("vmSize") or "")
        add = new_data_disks(
            disks,
            total_bytes,
            max_disks=max_data_disks(vm_size),
            node=node_id,
            vm_size=vm_size,
            temp_bytes=temp_disk_bytes(vm_size),
        )
        if not add:
            return
        if instance:
            # Scale-set instances take a PUT only: the model as read, with the new disks.
            # (Their disks go with the instance; deleteOption is for Flexible scale sets.)
            props.setdefault("storageProfile", {})["dataDisks"] = [*disks, *add]
            resp = self._send("PUT", url, {"api-version": COMPUTE_API}, json=body)
            if resp.status_code == 404:
                return
            if resp.status_code == 409:
                log.info("%s is busy; its storage is grown by a later call", node_id)
                return
            resp.raise_for_status()
            return
        # A VM's implicit disks outlive it unless told otherwise (they carry no ClusterId tag
        # for stop_cluster to find).
        for d in add:
            d["deleteOption"] = "Delete"
        patch = GenericResource(properties={"storageProfile": {"dataDisks": [*disks, *add]}})
        try:
            self.rm.resources.begin_update_by_id(url, patch, api_version=COMPUTE_API, polling=False)
        except ResourceNotFoundError:
            return
        except HttpResponseError as e:
            if e.status_code != 409:
                raise
            log.info("%s is busy; its storage is grown by a later call", node_id)

    def _storage_target(self, seen: _Seen, node_id: str) -> tuple[str, bool] | None:
        """(resource id, is a scale-set instance) of a node's VM."""
        if seen.vm is not None and node_id == seen.vm.name:
            return seen.vm.id, False
        if seen.vmss is None:
            return None
        instance_id = seen.instances.get(node_id)
        if instance_id is None:
            # A worker the last observation did not list yet: <scale set>_<instance id>.
            prefix, _, suffix = node_id.rpartition("_")
            if prefix != seen.vmss.name or not suffix.isdigit():
                return None
            instance_id = suffix
        return f"{seen.vmss.id}/virtualMachines/{instance_id}", True
