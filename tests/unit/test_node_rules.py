"""The local Spark provisioner's decisions (shared/domain/node_rules.py)."""

from __future__ import annotations

import pytest

from shared.domain import node_rules as nr
from shared.domain.nodes import NodeType


def test_node_type_lookup_names_the_known_types() -> None:
    assert nr.node_type("local-small").num_cores == 1
    with pytest.raises(ValueError, match="local-small, local-medium"):
        nr.node_type("Standard_DS3_v2")


def test_ports_and_memory_per_role() -> None:
    assert nr.ports_for("driver") == ("master", "master_ui", "connect", "app_ui")
    assert nr.ports_for("worker") == ("worker", "worker_ui")
    assert set(nr.ports_for("pool")) == set(nr.PORTS_DRIVER) | set(nr.PORTS_WORKER)
    assert nr.driver_memory({}) == nr.DRIVER_MEMORY
    assert nr.driver_memory({"spark.driver.memory": "2g"}) == "2g"
    assert nr.worker_cores(NodeType("t", 0.25, 512, "")) == 1
    assert nr.worker_cores(NodeType("t", 4, 512, "")) == 4
    assert nr.expected_procs("driver") == 2
    assert nr.expected_procs("worker") == nr.expected_procs("pool") == 1


def idle(node_id: str, ready: bool, since: int) -> nr.IdleNode:
    return nr.IdleNode(node_id, ready, since)


def test_a_cluster_takes_ready_nodes_first_then_the_longest_idle() -> None:
    nodes = [idle("a", False, 1), idle("b", True, 30), idle("c", True, 20), idle("d", True, 20)]
    take = nr.take_from_pool("p", nodes, 3, max_capacity=None, pool_size=4)
    assert take == nr.Take(taken=("c", "d", "b"), fresh=0)


def test_too_few_idle_nodes_start_new_ones_within_capacity() -> None:
    take = nr.take_from_pool("p", [idle("a", True, 1)], 3, max_capacity=5, pool_size=3)
    assert take == nr.Take(taken=("a",), fresh=2)


def test_a_request_that_does_not_fit_takes_nothing() -> None:
    take = nr.take_from_pool("p", [idle("a", True, 1)], 3, max_capacity=3, pool_size=2)
    assert take.taken == () and take.fresh == 0
    assert "max_capacity (3): 1 idle node(s) and room for 1 more, 3 needed" in take.refused


def hot(node_id: str, master: str, since: int = 0) -> nr.IdleNode:
    return nr.IdleNode(node_id, True, since, hot_master=master)


def test_a_driver_is_taken_among_the_idle_masters_first() -> None:
    # "w" ran longest idle, but runs a Worker of "m2": a driver needs a master of its own.
    nodes = [hot("w", "m2", 1), idle("m1", False, 5), idle("m2", True, 9)]
    take = nr.take_from_pool("p", nodes, 1, max_capacity=None, pool_size=3, role="driver")
    assert take.taken == ("m2",)
    only_workers = [hot("w", "gone", 1)]
    take = nr.take_from_pool("p", only_workers, 1, max_capacity=None, pool_size=1, role="driver")
    assert take.taken == ("w",)  # better than a new node: it starts its master itself


def test_workers_take_the_hot_workers_of_their_driver_first() -> None:
    nodes = [idle("m", True, 1), hot("other", "m3", 2), hot("mine2", "d", 8), hot("mine1", "d", 7)]
    take = nr.take_from_pool(
        "p", nodes, 3, max_capacity=None, pool_size=4, role="worker", driver_node="d"
    )
    assert take.taken == ("mine1", "mine2", "m")
    # A fresh driver (no node id of the pool): the usual order, whatever each node runs.
    take = nr.take_from_pool("p", nodes, 2, max_capacity=None, pool_size=4)
    assert take.taken == ("m", "other")


def test_a_node_becoming_idle_serves_the_idle_master_with_the_fewest_workers() -> None:
    assert nr.hot_worker_master([]) == ""  # no master: it runs one
    masters = [nr.IdleMaster("a", 1, 1), nr.IdleMaster("b", 0, 5), nr.IdleMaster("c", 0, 3)]
    assert nr.hot_worker_master(masters) == "c"  # no Worker yet, longest idle
    full = [nr.IdleMaster("a", 1, 1), nr.IdleMaster("b", 1, 2)]
    assert nr.hot_worker_master(full) == ""  # every master has its Worker: a new master
    assert nr.hot_worker_master(full, per_master=2) == "a"


def test_a_taken_driver_keeps_the_hot_workers_its_cluster_wants() -> None:
    attached = ["w2", "w1", "w3"]
    kept = nr.hot_workers_kept(attached, wanted=2, settings_fit=True, same_pool=True)
    assert kept == (("w1", "w2"), ("w3",))
    assert nr.hot_workers_kept(attached, wanted=0, settings_fit=True, same_pool=True) == (
        (),
        ("w1", "w2", "w3"),
    )
    # Settings of the cluster's own, or workers from another pool: every hot Worker restarts.
    for fit, same in ((False, True), (True, False)):
        kept = nr.hot_workers_kept(attached, wanted=3, settings_fit=fit, same_pool=same)
        assert kept == ((), ("w1", "w2", "w3"))


def test_an_idle_hot_worker_whose_master_is_not_idle_any_more_restarts() -> None:
    def stray(phase: str | None, alive: bool = True, taken_for_s: float = 0.0) -> bool:
        return nr.hot_worker_stray(
            master_phase=phase, master_alive=alive, master_taken_for_s=taken_for_s
        )

    assert not stray("idle")
    assert stray("idle", alive=False)  # its master is lost
    assert not stray("active", taken_for_s=1.0)  # just taken: its cluster's workers come next
    assert stray("active", taken_for_s=nr.HOT_WORKER_RESERVE_S)  # taken without it
    assert stray("active", alive=False)
    for phase in (None, "stopping", "returning", "terminating"):
        assert stray(phase)
    # A lost hot Worker stays LOST (the pool replaces it), whatever its master does.
    assert not nr.hot_worker_stray(
        alive=False, master_phase=None, master_alive=False, master_taken_for_s=0.0
    )


def test_idle_nodes_added_stay_within_capacity() -> None:
    assert nr.idle_to_add(3, max_capacity=None, pool_size=10) == 3
    assert nr.idle_to_add(3, max_capacity=4, pool_size=2) == 2
    assert nr.idle_to_add(3, max_capacity=4, pool_size=6) == 0


def test_ending_phase_gives_pool_nodes_back() -> None:
    assert nr.ending_phase("pool-1") == "returning"
    assert nr.ending_phase(None) == "terminating"


def test_active_status() -> None:
    assert nr.active_status(alive=False, was_ready=True, ready_now=True) == "LOST"
    assert nr.active_status(alive=True, was_ready=True, ready_now=False) == "RUNNING"
    assert nr.active_status(alive=True, was_ready=False, ready_now=True) == "RUNNING"
    assert nr.active_status(alive=True, was_ready=False, ready_now=False) == "STARTING"


def test_decommission_done_when_acknowledged_and_empty_or_timed_out() -> None:
    kw = {"elapsed_s": 1.0, "timeout_s": 120.0}
    assert nr.decommission_done(acknowledged=True, has_executors=False, **kw)
    assert not nr.decommission_done(acknowledged=True, has_executors=True, **kw)
    assert not nr.decommission_done(acknowledged=False, has_executors=False, **kw)
    assert nr.decommission_done(
        acknowledged=False, has_executors=True, elapsed_s=120.0, timeout_s=120.0
    )


def test_a_driver_is_ready_once_connect_answered_a_query() -> None:
    assert nr.node_ready("driver", master_alive=True, connect_answered=True)
    assert not nr.node_ready("driver", master_alive=False, connect_answered=True)
    assert not nr.node_ready("driver", master_alive=True, connect_answered=False)


def test_a_worker_is_ready_once_an_executor_on_it_registered() -> None:
    def ready(state: str, registered: bool, starting_for_s: float = 5.0) -> bool:
        return nr.node_ready(
            "worker",
            master_alive=True,
            worker_state=state,
            executor_registered=registered,
            starting_for_s=starting_for_s,
        )

    assert ready("ALIVE", True)
    assert not ready("ALIVE", False)
    assert not ready("DEAD", True)
    # spark_conf that leaves a worker without an executor: ready after a bound
    assert ready("ALIVE", False, starting_for_s=nr.EXECUTOR_WAIT_S)


def test_a_driver_without_a_readiness_report_is_failed_after_a_bound() -> None:
    assert not nr.ready_overdue("driver", starting_for_s=10.0, ready_timeout_s=180.0)
    assert nr.ready_overdue("driver", starting_for_s=180.0, ready_timeout_s=180.0)
    assert not nr.ready_overdue("worker", starting_for_s=999.0, ready_timeout_s=180.0)
