"""Workspaces on ARM: the managed resource group, its deployment (network, storage) and the
deployment stack whose deny assignment guards it (shared/domain/azure_guard.py)."""

from __future__ import annotations

import contextlib
import logging
from typing import Literal

from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.resource.resources.models import ResourceGroup

from shared.adapters.arm.base import WORKSPACE_DEPLOYMENT, ArmBase, WorkspaceNotReady, _Workspace
from shared.adapters.arm.requests import FORCE_DELETION_TYPES
from shared.domain import azure_guard

log = logging.getLogger("sparkplane.arm")

# The deployment stacks that put a deny assignment on each managed group
# (shared/domain/azure_guard.py).
STACKS_API = "2024-03-01"

WorkspaceStatus = Literal["PROVISIONING", "READY", "FAILED", "DELETING", "NOT_FOUND"]


class WorkspacesMixin(ArmBase):
    def create_workspace(self, workspace_id: str, region: str | None = None) -> None:
        """Makes the managed resource group (a quick synchronous PUT) and starts the workspace
        deployment in it. Calling it again repairs a failed deployment; while one runs, the
        second start is a no-op."""
        location = region or self.default_location
        group = self.group_name(workspace_id)
        self.rm.resource_groups.create_or_update(
            group,
            ResourceGroup(
                location=location,
                managed_by=self.platform_resource_id or None,
                tags={"Vendor": "sparkplane", "WorkspaceId": workspace_id},
            ),
        )
        params = {"workspaceId": workspace_id, "location": location}
        self._deploy(group, WORKSPACE_DEPLOYMENT, self._template("workspace"), params)
        if self.principal_id:
            self._guard(workspace_id, group, location)

    def _stack_url(self, workspace_id: str) -> str:
        name = azure_guard.stack_name(workspace_id)
        return (
            f"/subscriptions/{self.subscription_id}/providers/Microsoft.Resources"
            f"/deploymentStacks/{name}"
        )

    def _guard(self, workspace_id: str, group: str, location: str) -> None:
        """Starts the deployment stack whose deny settings keep everyone but the control plane
        from writing or deleting in the group (shared/domain/azure_guard.py)."""
        body = azure_guard.guard_stack(
            template=self._template("workspace-guard"),
            group=group,
            location=location,
            managed_by=self.platform_resource_id,
            tags={"Vendor": "sparkplane", "WorkspaceId": workspace_id},
            control_plane_principal_id=self.principal_id,
        )
        resp = self._send(
            "PUT", self._stack_url(workspace_id), {"api-version": STACKS_API}, json=body
        )
        if resp.status_code == 409:
            # The stack is being deployed or deleted already: a later create_workspace repairs.
            log.info("deployment stack of %s busy; not restarted", group)
            return
        resp.raise_for_status()

    def workspace_status(self, workspace_id: str) -> WorkspaceStatus:
        group = self.group_name(workspace_id)
        try:
            rg = self.rm.resource_groups.get(group)
        except ResourceNotFoundError:
            return "NOT_FOUND"
        if rg.properties and (rg.properties.provisioning_state or "") == "Deleting":
            return "DELETING"
        state = self._deployment_state(group, WORKSPACE_DEPLOYMENT)
        if state == "Succeeded":
            return "READY"
        if state is None or state in ("Failed", "Canceled", "Deleting", "Deleted"):
            return "FAILED"
        return "PROVISIONING"

    def delete_workspace(self, workspace_id: str) -> None:
        """Starts deleting the managed resource group and everything in it."""
        group = self.group_name(workspace_id)
        with contextlib.suppress(ResourceNotFoundError):
            self.rm.resource_groups.begin_delete(
                group, force_deletion_types=FORCE_DELETION_TYPES, polling=False
            )
        if self.principal_id:
            # The group is going (the control plane is not denied): its guard goes too, detaching.
            resp = self._send(
                "DELETE",
                self._stack_url(workspace_id),
                {
                    "api-version": STACKS_API,
                    "unmanageAction.Resources": "detach",
                    "unmanageAction.ResourceGroups": "detach",
                },
            )
            if resp.status_code not in (404, 409):  # gone already, or being deleted
                resp.raise_for_status()
        with self._lock:
            self._workspaces.pop(workspace_id, None)
            for cid in [c for c, g in self._groups.items() if g == group]:
                self._groups.pop(cid, None)
                self._seen.pop(cid, None)

    def _workspace(self, workspace_id: str) -> _Workspace:
        """The location and subnet clusters of the workspace go to (read once, then kept)."""
        with self._lock:
            ws = self._workspaces.get(workspace_id)
        if ws is not None:
            return ws
        group = self.group_name(workspace_id)
        try:
            location = self.rm.resource_groups.get(group).location
            dep = self.dm.deployments.get(group, WORKSPACE_DEPLOYMENT)
        except ResourceNotFoundError as e:
            raise WorkspaceNotReady(f"workspace {workspace_id} has no managed group") from e
        props = dep.properties
        state = props.provisioning_state if props else None
        if state != "Succeeded":
            raise WorkspaceNotReady(f"workspace {workspace_id}: deployment is {state}")
        outputs = (props.outputs if props else None) or {}
        subnet = (outputs.get("subnetId") or {}).get("value") or self._find_subnet(group)
        if not subnet:
            raise WorkspaceNotReady(f"workspace {workspace_id}: no subnet in {group}")
        ws = _Workspace(location=location, subnet_id=subnet)
        with self._lock:
            self._workspaces[workspace_id] = ws
        return ws

    def _find_subnet(self, group: str) -> str | None:
        """Without a `subnetId` output: the first subnet of the group's first VNet."""
        vnet_type = "Microsoft.Network/virtualNetworks"
        for r in self.rm.resources.list_by_resource_group(
            group, filter=f"resourceType eq '{vnet_type}'"
        ):
            if r.id is None:  # every listed resource has an id; the SDK types it optional
                continue
            vnet = self.rm.resources.get_by_id(r.id, api_version=self._api(vnet_type))
            for subnet in (vnet.properties or {}).get("subnets") or []:
                return subnet.get("id")
        return None
