"""Bulk reads: one Azure Resource Graph query, paged, for the nodes of every cluster at once.

`unhealthy_clusters` asks Resource Graph (`POST /providers/Microsoft.ResourceGraph/resources`)
for the VMs and scale-set instances tagged ClusterId whose provisioning failed or that are not
powered on, and returns their cluster ids: the reconciler timer then observes those clusters
only (shared/services/health.py). Resource Graph is not an ARM read of the subscription (it
has its own limit, 15 queries per 5 seconds per user), and a healthy fleet answers with one
empty page, whatever its size. Scale-set instances are in the `computeresources` table
(Uniform scale sets), VMs in `resources`; the power state is
`properties.extended.instanceView.powerState.code` in both.
"""

from __future__ import annotations

from typing import Any

from shared.adapters.arm.base import ArmBase

GRAPH_API = "2022-10-01"
GRAPH_URL = "/providers/Microsoft.ResourceGraph/resources"
# Rows per page (Resource Graph's maximum is 1000).
PAGE = 1000
UNHEALTHY_QUERY = """\
union
  (resources | where type =~ 'microsoft.compute/virtualmachines'),
  (computeresources | where type =~ 'microsoft.compute/virtualmachinescalesets/virtualmachines')
| where isnotempty(tags.ClusterId) and tags.Vendor =~ 'sparkplane'
| extend state = tostring(properties.provisioningState),
         power = tostring(properties.extended.instanceView.powerState.code)
| where state =~ 'Failed' or power in~ ('PowerState/stopped', 'PowerState/deallocated')
| distinct clusterId = tostring(tags.ClusterId)
| order by clusterId asc"""


class BulkMixin(ArmBase):
    def read_reason(self, cluster_id: str, reason: str) -> None:
        """The reconciler timer is about to read the cluster, and why: a suspect's reads go
        before drift reads when the budget is short (shared/domain/arm_budget.py, point 5)."""
        self.throttle.mark(cluster_id, reason)

    def unhealthy_clusters(self) -> set[str]:
        return {str(row["clusterId"]) for row in self.graph_rows(UNHEALTHY_QUERY)}

    def graph_rows(self, query: str) -> list[dict[str, Any]]:
        """Every row of a Resource Graph query over `graph_subscriptions`, page by page."""
        out: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(1000):  # pages; a bound against a service that never stops paging
            options: dict[str, Any] = {"resultFormat": "objectArray", "$top": PAGE}
            if token:
                options["$skipToken"] = token
            body = {
                "subscriptions": list(self.graph_subscriptions),
                "query": query,
                "options": options,
            }
            resp = self._send("POST", GRAPH_URL, {"api-version": GRAPH_API}, json=body)
            resp.raise_for_status()
            page = resp.json()
            out.extend(page.get("data") or [])
            token = page.get("$skipToken")
            if not token:
                break
        return out
