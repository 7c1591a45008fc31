"""Adopted credentials (shared/domain/spark_auth.py): a cluster whose driver is a hot pool node
uses the credentials of that node's credential id, stored on the cluster document."""

from __future__ import annotations

import pytest

from shared.domain import reconcile as rec
from shared.domain import spark_auth as sa
from shared.domain.cluster import Cluster
from shared.domain.nodes import Node


def _cluster(cluster_id: str = "c-1", **extra: object) -> Cluster:
    return Cluster.model_validate(
        {
            "cluster_id": cluster_id,
            "workspace_id": "w",
            "spec": {"cluster_name": "x", "spark_version": "4.1.x", "node_type_id": "n"},
            **extra,
        }
    )


def test_pool_node_ids_differ_per_node_and_per_idle_period() -> None:
    a1 = sa.pool_node_credential_id("node-a", "n1")
    a2 = sa.pool_node_credential_id("node-a", "n2")
    b1 = sa.pool_node_credential_id("node-b", "n1")
    assert len({a1, a2, b1}) == 3
    ca1, ca2 = sa.cluster_credentials("k", a1), sa.cluster_credentials("k", a2)
    assert ca1 is not None and ca2 is not None
    assert ca1.connect_token != ca2.connect_token and ca1.auth_secret != ca2.auth_secret
    with pytest.raises(ValueError):
        sa.pool_node_credential_id("node-a", "")


@pytest.mark.parametrize(
    ("reported", "want"),
    [
        (None, ""),
        ("", ""),
        ("c-1", ""),  # the cluster's own id: stored as ""
        ("c-2", ""),  # another cluster's id is never adopted
        ("pool-node:", ""),
        ("pool-node:abc:n1", "pool-node:abc:n1"),
    ],
)
def test_which_id_a_cluster_adopts(reported: str | None, want: str) -> None:
    assert sa.adopted_credential_id("c-1", reported) == want


def test_credentials_of_prefers_the_adopted_id() -> None:
    own = sa.credentials_of("k", "c-1")
    adopted_id = sa.pool_node_credential_id("node-a", "n1")
    adopted = sa.credentials_of("k", "c-1", adopted_id)
    assert own == sa.cluster_credentials("k", "c-1")
    assert adopted == sa.cluster_credentials("k", adopted_id)
    assert own != adopted
    assert sa.credentials_of("", "c-1", adopted_id) is None


def _driver(status: str = "RUNNING", **attrs: str) -> Node:
    return Node(
        "d1",
        "driver",
        status,  # type: ignore[arg-type]
        1,
        attrs={"connect_url": "sc://localhost:1", **attrs},
    )


def test_the_plan_stores_the_id_the_driver_runs_with_and_not_in_the_driver_view() -> None:
    adopted_id = sa.pool_node_credential_id("d1", "n1")
    c = _cluster(state="PENDING", desired="RUNNING")
    p = rec.plan(c, [_driver("STARTING", credential_id=adopted_id)], now=10)
    assert p.cluster.credential_id == adopted_id
    assert p.cluster.driver is not None and sa.CREDENTIAL_ID_ATTR not in p.cluster.driver
    assert p.changed


def test_the_id_follows_the_driver() -> None:
    adopted_id = sa.pool_node_credential_id("d1", "n1")
    c = _cluster(state="PENDING", desired="RUNNING", credential_id=adopted_id)
    # a new driver that is not a hot pool node: the cluster's own credentials again
    p = rec.plan(c, [_driver("STARTING")], now=10)
    assert p.cluster.credential_id == ""
    # a driver that reports another cluster's id does not make the cluster use it
    p = rec.plan(c, [_driver("STARTING", credential_id="c-2")], now=10)
    assert p.cluster.credential_id == ""


def test_get_cluster_and_node_requests_use_the_adopted_credentials() -> None:
    from shared.services.cluster_wire import ClusterWire
    from shared.services.lifecycle import node_request

    adopted_id = sa.pool_node_credential_id("d1", "n1")
    c = _cluster(
        "c-7",
        driver={"connect_url": "sc://localhost:20001"},
        credential_id=adopted_id,
    )
    creds = sa.cluster_credentials("k", adopted_id)
    own = sa.cluster_credentials("k", "c-7")
    assert creds is not None and own is not None
    out = ClusterWire({}, {}, spark_secret_key="k").details(c)
    assert out["driver"]["connect_url"] == f"sc://localhost:20001/;token={creds.connect_token}"
    assert own.connect_token not in repr(out)
    req = node_request(c, "k")
    assert (req.spark_auth_secret, req.connect_token) == (creds.auth_secret, creds.connect_token)
    assert "credential_id" not in out and creds.auth_secret not in c.model_dump_json()


@pytest.mark.parametrize(
    ("change", "kept"),
    [
        ({}, True),
        ({"user_conf": {"spark.executor.memory": "1g"}}, False),
        ({"spark_env_vars": {"X": "1"}}, False),
        ({"conf_files": {"fairscheduler.xml": "<x/>"}}, False),
        ({"driver_type_id": "local-medium"}, False),
        ({"worker_type_id": "local-medium"}, False),
    ],
)
def test_a_hot_connect_server_serves_only_a_cluster_without_settings_of_its_own(
    change: dict[str, object], kept: bool
) -> None:
    from shared.domain.node_rules import keeps_hot_connect

    args: dict[str, object] = {
        "user_conf": {},
        "spark_env_vars": {},
        "conf_files": {},
        "driver_type_id": "local-small",
        "worker_type_id": "local-small",
        "pool_type_id": "local-small",
        **change,
    }
    assert keeps_hot_connect(**args) is kept  # type: ignore[arg-type]
