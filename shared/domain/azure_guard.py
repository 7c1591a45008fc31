"""The deny assignment on a workspace's managed resource group (pure: no I/O).

As the Azure Databricks appliance does, nobody but the control plane may write or delete in a
managed resource group, not even an Owner of the subscription: a subscription-scope deployment
stack manages the group (infra/templates/workspace-guard.json) with deny settings
`denyWriteAndDelete`, applied to child scopes (every resource in the group, also the clusters'
VMs deployed later), the control plane's own identity excluded. Reads stay open to whoever has
them. Deleting the stack detaches the group (never deletes it): the workspace deletion deletes the
group itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

DENY_MODE = "denyWriteAndDelete"
# A deployment stack takes at most 5 excluded principals.
MAX_EXCLUDED_PRINCIPALS = 5
GUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def stack_name(workspace_id: str) -> str:
    """The subscription-scope deployment stack that guards the workspace's group."""
    safe = re.sub(r"[^A-Za-z0-9_.()-]", "-", workspace_id)
    return f"sparkplane-guard-{safe}"[:90]


def guard_stack(
    *,
    template: Mapping[str, Any],
    group: str,
    location: str,
    managed_by: str,
    tags: Mapping[str, str],
    control_plane_principal_id: str,
) -> dict[str, Any]:
    """The body of the stack's PUT. Raises ValueError without a well-formed principal id: a
    deny assignment that did not exclude the control plane would lock it out of its own groups."""
    if not GUID.fullmatch(control_plane_principal_id or ""):
        raise ValueError("the control plane's principal id (an object id GUID) is needed")
    return {
        "location": location,
        "tags": dict(tags),
        "properties": {
            "description": f"sparkplane: only the control plane writes or deletes in {group}",
            "template": dict(template),
            "parameters": {
                "groupName": {"value": group},
                "location": {"value": location},
                "managedBy": {"value": managed_by},
                "tags": {"value": dict(tags)},
            },
            "actionOnUnmanage": {
                "resources": "detach",
                "resourceGroups": "detach",
                "managementGroups": "detach",
            },
            "denySettings": {
                "mode": DENY_MODE,
                "applyToChildScopes": True,
                "excludedPrincipals": [control_plane_principal_id],
                "excludedActions": [],
            },
        },
    }
