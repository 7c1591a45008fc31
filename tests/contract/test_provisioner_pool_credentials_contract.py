"""The `Provisioner` contract, the credential ids of pool nodes (shared/domain/spark_auth.py,
"Adopted credentials"): every adapter passes it, on the harness of
test_provisioner_pools_contract.py (its adapters, fixtures and helpers).

A driver taken idle from a pool reports the credential id its cluster adopts
(`Node.attrs[CREDENTIAL_ID_ATTR]`): the node's, new for each idle period, so no two clusters
ever adopt the same one. Every other node (a fresh driver, a driver started as a new pool
node, a worker) reports none: its cluster uses its own id.
"""

from __future__ import annotations

from shared.domain.spark_auth import CREDENTIAL_ID_ATTR, POOL_NODE_PREFIX
from shared.ports import Provisioner
from tests.contract import test_provisioner_pools_contract as harness
from tests.contract.test_provisioner_pools_contract import (
    Wait,
    driver_runs,
    idle_pool,
    new_cluster,
    pool_test,
    pool_view,
    worker_view,
)

# The harness's fixtures (each adapter of _ADAPTERS).
adapter = harness.adapter
prov = harness.prov
wait = harness.wait


def _credential_ids(prov: Provisioner, cluster_id: str) -> dict[str, str]:
    """role -> credential id of each node of the cluster that reports one."""
    return {
        n.role: n.attrs[CREDENTIAL_ID_ATTR]
        for n in prov.observe(cluster_id)
        if CREDENTIAL_ID_ATTR in n.attrs
    }


@pool_test
def test_a_driver_taken_idle_reports_a_credential_id_new_each_idle_period(
    prov: Provisioner, wait: Wait
) -> None:
    pool, (idle,) = idle_pool(prov, wait, 1)
    first = new_cluster(prov, driver_pool=pool)
    assert prov.start_driver(first).node_id == idle
    driver_runs(prov, wait, first.cluster_id)
    ids = _credential_ids(prov, first.cluster_id)
    assert list(ids) == ["driver"]
    first_id = ids["driver"]
    assert first_id.startswith(POOL_NODE_PREFIX) and idle in first_id
    assert first.cluster_id not in first_id

    # Given back and taken by another cluster: another id.
    prov.stop_cluster(first.cluster_id)
    wait.until(
        lambda: pool_view(prov, pool.pool_id).get(idle),
        lambda v: v == ("IDLE", ""),
        "the node is idle again",
    )
    second = new_cluster(prov, driver_pool=pool)
    assert prov.start_driver(second).node_id == idle
    driver_runs(prov, wait, second.cluster_id)
    second_id = _credential_ids(prov, second.cluster_id)["driver"]
    assert second_id.startswith(POOL_NODE_PREFIX) and second_id != first_id


@pool_test
def test_a_worker_taken_idle_reports_none(prov: Provisioner, wait: Wait) -> None:
    pool, (idle,) = idle_pool(prov, wait, 1)
    req = new_cluster(prov, pool=pool)
    prov.start_driver(req)  # a fresh driver
    (worker,) = prov.add_workers(req, 1)
    assert worker.node_id == idle
    wait.equals(lambda: worker_view(prov, req.cluster_id), {idle: "RUNNING"})
    assert _credential_ids(prov, req.cluster_id) == {}


@pool_test
def test_a_driver_started_as_a_new_pool_node_reports_none(prov: Provisioner, wait: Wait) -> None:
    pool, _ = idle_pool(prov, wait, 0)
    req = new_cluster(prov, driver_pool=pool)
    prov.start_driver(req)
    driver_runs(prov, wait, req.cluster_id)
    assert _credential_ids(prov, req.cluster_id) == {}


def test_a_fresh_driver_reports_none(prov: Provisioner, wait: Wait) -> None:
    req = new_cluster(prov)
    prov.start_driver(req)
    driver_runs(prov, wait, req.cluster_id)
    assert _credential_ids(prov, req.cluster_id) == {}
