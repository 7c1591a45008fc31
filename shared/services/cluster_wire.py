"""The Clusters API's wire shapes: a cluster's details as clusters/get and clusters/list answer
them, the node types and Spark versions, and the query of clusters/events. No store access."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from shared.domain import spark_auth
from shared.domain.cluster import Cluster
from shared.domain.states import State
from shared.domain.wire import INT64_MAX, integer
from shared.errors import InvalidParameterValue
from shared.ports import EventQuery, NodeType, SparkVersion

ENDPOINT_TAGS = {
    "SparkConnectUrl": "connect_url",
    "SparkMasterUrl": "master_url",
    "SparkUiUrl": "spark_ui_url",
    "SparkMasterUiUrl": "master_ui_url",
}


class ClusterWire:
    """Clusters as the API answers them, with the provisioner's node types and Spark versions
    (by id and key)."""

    def __init__(
        self,
        node_types: Mapping[str, NodeType],
        spark_versions: Mapping[str, SparkVersion],
        spark_secret_key: str,
    ) -> None:
        self.types = node_types
        self.versions = spark_versions
        self.spark_secret_key = spark_secret_key

    def _driver_view(self, c: Cluster) -> dict[str, Any] | None:
        """The driver's endpoints as the cluster's workspace sees them: the connect URL with the
        cluster's Spark Connect token (its adopted credentials' when its driver is a hot pool
        node; callers reach details() only for their own workspace)."""
        if c.driver is None:
            return None
        driver = dict(c.driver)
        creds = spark_auth.credentials_of(self.spark_secret_key, c.cluster_id, c.credential_id)
        if creds is not None and driver.get("connect_url"):
            driver["connect_url"] = spark_auth.connect_url(
                driver["connect_url"], creds.connect_token
            )
        return driver

    def details(self, c: Cluster, *, with_spec: bool = True) -> dict[str, Any]:
        spec = c.spec.wire()
        driver = self._driver_view(c)
        out: dict[str, Any] = dict(spec)
        if c.spec.autoscale is None:
            out["num_workers"] = c.target_workers
        out.update(
            {
                "cluster_id": c.cluster_id,
                "creator_user_name": c.creator_user_name,
                "cluster_source": c.cluster_source,
                "state": c.state.value,
                "state_message": c.state_message,
                "start_time": c.start_time,
                "default_tags": {
                    "Vendor": "sparkplane",
                    "Creator": c.creator_user_name,
                    "ClusterName": c.spec.cluster_name,
                    "ClusterId": c.cluster_id,
                    # How to reach the cluster, also for SDK users (whose SparkNode type drops
                    # the driver's extra fields): the same values as driver.connect_url etc.
                    **{
                        tag: driver[key]
                        for tag, key in ENDPOINT_TAGS.items()
                        if driver and key in driver
                    },
                },
                "executors": c.executors,
                "pinned_by_user_name": c.creator_user_name if c.pinned else None,
            }
        )
        for key in (
            "terminated_time",
            "last_restarted_time",
            "last_state_loss_time",
            "last_activity_time",
            "spark_context_id",
        ):
            value = getattr(c, key)
            if value is not None:
                out[key] = value
        if c.termination_reason is not None:
            out["termination_reason"] = c.termination_reason.model_dump()
        if driver is not None:
            out["driver"] = driver
        if c.state in (State.RUNNING, State.RESIZING):
            cores, mem = self._resources(c)
            out["cluster_cores"] = cores
            out["cluster_memory_mb"] = mem
        if with_spec:
            out["spec"] = spec
        return {k: v for k, v in out.items() if v is not None}

    def _resources(self, c: Cluster) -> tuple[float, int]:
        nt = self.types
        drv = nt.get(c.spec.driver_node_type_id or "")
        wrk = nt.get(c.spec.node_type_id or "")
        n = len(c.executors)
        cores = (drv.num_cores if drv else 0) + n * (wrk.num_cores if wrk else 0)
        mem = (drv.memory_mb if drv else 0) + n * (wrk.memory_mb if wrk else 0)
        return cores, mem

    def node_types(self) -> dict[str, Any]:
        return {
            "node_types": [
                {
                    "node_type_id": n.node_type_id,
                    "memory_mb": n.memory_mb,
                    "num_cores": n.num_cores,
                    "description": n.description,
                    "instance_type_id": n.node_type_id,
                    "category": n.category,
                    "is_deprecated": False,
                    "num_gpus": 0,
                    "is_hidden": False,
                    "support_port_forwarding": True,
                    "node_instance_type": {
                        "instance_type_id": n.node_type_id,
                        "local_disks": 0,
                        "local_disk_size_gb": 0,
                    },
                }
                for n in self.types.values()
            ]
        }

    def spark_versions(self) -> dict[str, Any]:
        return {"versions": [{"key": v.key, "name": v.name} for v in self.versions.values()]}


def _int(body: Mapping[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(key)
    return default if v is None else integer(v, key, lo, hi)


def parse_event_query(body: Mapping[str, Any]) -> EventQuery:
    raw_order = body.get("order") or "DESC"
    if raw_order not in ("ASC", "DESC"):
        raise InvalidParameterValue("order must be ASC or DESC.")
    order: Literal["ASC", "DESC"] = "ASC" if raw_order == "ASC" else "DESC"
    types = body.get("event_types") or []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise InvalidParameterValue("event_types must be a list of strings.")
    limit = _int(body, "limit", None, 1, 500)
    page_size = _int(body, "page_size", None, 0, 500)
    limit = limit or page_size or 50
    offset = _int(body, "offset", 0, 0, 2**31)
    token = body.get("page_token")
    if token:
        if not isinstance(token, str) or not token.isdigit() or int(token) >= 2**31:
            raise InvalidParameterValue("page_token is not a token this API returned.")
        offset = int(token)
    return EventQuery(
        start_time=_int(body, "start_time", None, 0, INT64_MAX),
        end_time=_int(body, "end_time", None, 0, INT64_MAX),
        types=tuple(types),
        order=order,
        offset=offset or 0,
        limit=limit,
    )
