"""The cluster rules: validation, commands, and the reconcile planner (pure, no I/O)."""

from __future__ import annotations

import pytest

from shared.domain import cluster as dom
from shared.domain import reconcile as rec
from shared.domain.states import State
from shared.errors import InvalidParameterValue, InvalidState
from shared.ports import Node

NODE_TYPES = {"small", "large"}
VERSIONS = {"4.1.x-scala2.13"}


def spec(**kw: object) -> dom.ClusterSpec:
    body = {"spark_version": "4.1.x-scala2.13", "node_type_id": "small", "num_workers": 2, **kw}
    body = {k: v for k, v in body.items() if v is not None}
    return dom.validate_spec(dom.parse_spec(body), node_types=NODE_TYPES, spark_versions=VERSIONS)


def new(**kw: object) -> dom.Cluster:
    return dom.create(cluster_id="c1", workspace_id="w", spec=spec(**kw), user="u", now=1000)


def nodes(driver: str = "RUNNING", workers: tuple[str, ...] = ("RUNNING", "RUNNING")) -> list[Node]:
    out = [Node("d", "driver", driver, 1)] if driver else []  # type: ignore[arg-type]
    out += [Node(f"w{i}", "worker", s, 10 + i) for i, s in enumerate(workers)]  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"spark_version": "9.9.x"}, "Invalid spark version"),
        ({"node_type_id": "huge"}, "Node type huge is not supported"),
        ({"driver_node_type_id": "huge"}, "driver_node_type_id"),
        ({"autoscale": {"min_workers": 2, "max_workers": 2}, "num_workers": None}, "greater"),
        ({"autoscale": {"min_workers": 1, "max_workers": 3}}, "Only one of num_workers"),
        ({"autotermination_minutes": 5}, "between 10 and 10000"),
        ({"autotermination_minutes": 10001}, "between 10 and 10000"),
        ({"num_workers": -1}, "num_workers"),
        ({"num_workers": "many"}, "num_workers"),
        ({"num_workers": "1.5"}, "num_workers"),
        ({"num_workers": ""}, "num_workers"),
        ({"num_workers": True}, "num_workers"),
        ({"num_workers": "10001"}, "num_workers"),
        ({"autotermination_minutes": "5"}, "between 10 and 10000"),
        ({"autotermination_minutes": "30.0"}, "autotermination_minutes"),
        (
            {"autoscale": {"min_workers": "1", "max_workers": "x"}, "num_workers": None},
            "max_workers",
        ),
        ({"custom_tags": {str(i): "x" for i in range(46)}}, "45 custom tags"),
        ({"spark_version": None}, "Missing required field: spark_version"),
        ({"node_type_id": None}, "Missing required field: node_type_id"),
    ],
)
def test_invalid_specs_are_rejected_with_the_databricks_error(kw: dict, message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        spec(**kw)


@pytest.mark.parametrize("minutes", [0, 10, 120, 10000, None])
def test_autotermination_accepts_zero_and_the_range(minutes: int | None) -> None:
    assert spec(autotermination_minutes=minutes).autotermination_minutes == minutes


def test_numbers_sent_as_strings_are_kept_as_numbers() -> None:
    """Airflow's operators send every number as a string; Databricks accepts them."""
    s = spec(num_workers="3", autotermination_minutes="30")
    assert (s.num_workers, s.autotermination_minutes) == (3, 30)
    auto = spec(num_workers=None, autoscale={"min_workers": "1", "max_workers": "4"})
    assert auto.wire()["autoscale"] == {"min_workers": 1, "max_workers": 4}


def test_a_jobs_cluster_body_keeps_what_was_sent_with_its_numbers_typed() -> None:
    body = {
        "spark_version": "4.1.x-scala2.13",
        "num_workers": "2",
        "autoscale": None,
        "autotermination_minutes": "0",
        "azure_attributes": {"first_on_demand": "1"},  # not a field this model types
    }
    assert dom.typed_body(body) == {**body, "num_workers": 2, "autotermination_minutes": 0}
    # A serverless pool's body has no spark_version: none is added.
    assert dom.typed_body({"num_workers": "1"}) == {"num_workers": 1}
    # What does not parse is kept as sent, for parse_spec to refuse with the field's name.
    assert dom.typed_body({"num_workers": "1.5", "autotermination_minutes": "30"}) == {
        "num_workers": "1.5",
        "autotermination_minutes": "30",
    }


def test_defaults_driver_node_type_and_size() -> None:
    s = spec(num_workers=None)
    assert s.num_workers == 0
    assert s.driver_node_type_id == "small"


def test_create_is_pending_with_a_creating_event_and_the_initial_size() -> None:
    c = dom.create(
        cluster_id="c1",
        workspace_id="w",
        spec=spec(num_workers=None, autoscale={"min_workers": 1, "max_workers": 4}),
        user="u",
        now=5,
    )
    assert c.state == State.PENDING and c.desired == "RUNNING"
    assert c.target_workers == 1
    [ev] = c.pending_events
    assert ev["type"] == "CREATING"
    assert ev["details"]["autoscale"] == {"min_workers": 1, "max_workers": 4}
    assert ev["id"] == f"{c.generation}-0"


def test_unknown_fields_are_kept_in_the_spec() -> None:
    assert spec(enable_local_disk_encryption=True).wire()["enable_local_disk_encryption"] is True


def running(c: dom.Cluster, workers: int = 2) -> dom.Cluster:
    p = rec.plan(c, nodes(workers=("RUNNING",) * workers), now=2000)
    assert p.cluster.state == State.RUNNING
    return p.cluster


def test_state_preconditions_of_commands() -> None:
    c = new()
    for cmd in (
        lambda c: dom.restart(c, user="u", now=1),
        lambda c: dom.resize(c, num_workers=3, autoscale=None, user="u", now=1),
        lambda c: dom.start(c, user="u", now=1),
        lambda c: dom.edit(c, spec(), user="u", now=1),
    ):
        with pytest.raises(InvalidState, match="unexpected state PENDING"):
            cmd(c)


def test_delete_is_a_noop_when_terminating_or_terminated() -> None:
    c = dom.terminate(new(), reason=dom.USER_REQUEST, user="u", now=2)
    assert c.state == State.TERMINATING
    assert dom.terminate(c, reason=dom.USER_REQUEST, user="u", now=3) is c


def test_resize_sets_target_and_event() -> None:
    c = running(new())
    r = dom.resize(c, num_workers=5, autoscale=None, user="u", now=3000)
    assert r.state == State.RESIZING and r.target_workers == 5
    assert r.pending_events[0]["details"] == {
        "current_num_workers": 2,
        "target_num_workers": 5,
        "cause": "USER_REQUEST",
        "user": "u",
    }
    same = dom.resize(
        r.model_copy(update={"state": State.RUNNING}),
        num_workers=5,
        autoscale=None,
        user="u",
        now=3001,
    )
    assert same.state == State.RUNNING


def test_resize_to_autoscale_clamps_the_current_size() -> None:
    c = running(new(num_workers=6), workers=6)
    r = dom.resize(
        c, num_workers=None, autoscale=dom.AutoScale(min_workers=1, max_workers=4), user="u", now=1
    )
    assert r.target_workers == 4 and r.spec.num_workers is None


def test_the_autoscaler_cancels_joining_workers_of_a_resizing_cluster_and_only_that() -> None:
    auto = {"min_workers": 1, "max_workers": 8}
    c = running(new(autoscale=auto, num_workers=None), workers=1)
    up = dom.autoscale_to(c, target=6, remove=(), reason="backlog", now=3000)
    assert up.state == State.RESIZING and up.resize_from == 1
    # The backlog is gone while 5 workers boot: 3 of them are cancelled.
    down = dom.autoscale_to(up, target=3, remove=(), reason="backlog gone", now=4000)
    assert down.state == State.RESIZING and down.target_workers == 3 and down.resize_from == 1
    assert down.pending_events[-1]["details"] == {
        "current_num_workers": 6,
        "target_num_workers": 3,
        "cause": "AUTOSCALE",
    }
    with pytest.raises(InvalidState, match="unexpected state RESIZING"):
        dom.autoscale_to(up, target=7, remove=(), reason="more", now=4000)
    # The reconcile cancels workers that are still starting, newest first.
    booting = nodes(workers=("RUNNING",) + ("STARTING",) * 5)
    p = rec.plan(down, booting, now=5000)
    [removal] = [a for a in p.actions if isinstance(a, rec.RemoveWorkers)]
    assert set(removal.node_ids) <= {n.node_id for n in booting if n.status == "STARTING"}
    assert len(removal.node_ids) == 3
    # Two workers joined of the three kept: still an upsize from 1, completed at 3.
    done = rec.plan(down, nodes(workers=("RUNNING",) * 3), now=6000).cluster
    assert done.state == State.RUNNING
    assert [e["type"] for e in done.pending_events] == ["UPSIZE_COMPLETED"]


def test_a_start_forgets_the_autoscalers_memory_of_the_last_run() -> None:
    # The last run's demand history would otherwise meet the new run's first sample across the
    # whole gap and make it the average demand (the floor of a burst caught first).
    ended = new(autoscale={"min_workers": 1, "max_workers": 8}, num_workers=None)
    ended = ended.model_copy(
        update={
            "state": State.TERMINATED,
            "scaling_memory": {"seen_until_ms": 5_000, "avg_workers": 1.5, "tail_workers": 8.0},
        }
    )
    started = dom.start(ended, user="u", now=90_000)
    assert started.state == State.PENDING and started.scaling_memory is None


def test_edit_of_a_running_cluster_restarts_it() -> None:
    c = running(new())
    e = dom.edit(c, spec(node_type_id="large", num_workers=1), user="u", now=3000)
    assert e.state == State.RESTARTING and e.restart_pending
    assert e.pending_events[0]["type"] == "EDITED"
    # the planner stops every old node first, then starts new ones
    p = rec.plan(e, nodes(), now=3001)
    assert p.actions == [rec.StopCluster()] and p.requeue
    p = rec.plan(e, [], now=3002)
    assert p.actions == [rec.StartDriver(), rec.AddWorkers(1)]
    p = rec.plan(p.cluster, nodes(workers=("RUNNING",)), now=3003)
    assert p.cluster.state == State.RUNNING and p.cluster.last_restarted_time == 3003


def test_edit_of_a_terminated_cluster_keeps_it_terminated() -> None:
    c = rec.plan(dom.terminate(new(), reason=dom.USER_REQUEST, user="u", now=2), [], now=3).cluster
    assert c.state == State.TERMINATED
    assert dom.edit(c, spec(num_workers=4), user="u", now=4).state == State.TERMINATED


def test_plan_starts_driver_and_workers_then_reports_running() -> None:
    c = new()
    p = rec.plan(c, [], now=1001)
    assert p.actions == [rec.StartDriver(), rec.AddWorkers(2)] and p.requeue
    p = rec.plan(c, nodes(driver="STARTING", workers=("STARTING", "STARTING")), now=1002)
    assert p.actions == [] and p.requeue and p.cluster.state == State.PENDING
    p = rec.plan(c, nodes(), now=1003)
    assert p.cluster.state == State.RUNNING and not p.requeue
    assert [e["type"] for e in p.cluster.pending_events] == ["RUNNING"]
    assert len(p.cluster.executors) == 2 and p.cluster.driver["node_id"] == "d"
    assert p.cluster.spark_context_id is not None


def test_plan_is_idempotent_when_converged() -> None:
    c = running(new())
    p = rec.plan(c, nodes(), now=5000)
    assert not p.changed and not p.actions and not p.requeue


def test_lost_worker_is_replaced_with_a_nodes_lost_event() -> None:
    c = running(new())
    p = rec.plan(c, nodes(workers=("RUNNING", "LOST")), now=5000)
    assert rec.RemoveWorkers(("w1",)) in p.actions and rec.AddWorkers(1) in p.actions
    assert p.cluster.state == State.RUNNING
    assert [e["type"] for e in p.cluster.pending_events] == ["NODES_LOST"]


def test_dead_driver_terminates_with_driver_unreachable() -> None:
    c = running(new())
    p = rec.plan(c, nodes(driver="LOST"), now=5000)
    assert p.cluster.state == State.TERMINATING and p.cluster.desired == "TERMINATED"
    assert p.cluster.termination_reason.code == "DRIVER_UNREACHABLE"
    assert p.actions == [rec.StopCluster()]
    done = rec.plan(p.cluster, [], now=5001).cluster
    assert done.state == State.TERMINATED and done.terminated_time == 5001


def test_downsize_removes_starting_then_hinted_then_newest() -> None:
    c = running(new(num_workers=3), workers=3)
    c = dom.resize(c, num_workers=1, autoscale=None, user="u", now=1)
    c.remove_hint = ["w0"]
    p = rec.plan(c, nodes(workers=("RUNNING", "RUNNING", "RUNNING")), now=2)
    assert p.actions == [rec.RemoveWorkers(("w0", "w2"))]
    p = rec.plan(p.cluster, nodes(workers=("RUNNING",)), now=3)
    assert p.cluster.state == State.RUNNING
    assert "UPSIZE_COMPLETED" not in [e["type"] for e in p.cluster.pending_events]


def test_pending_too_long_fails_with_bootstrap_timeout() -> None:
    c = new()
    p = rec.plan(c, nodes(driver="STARTING", workers=()), now=1000 + 11 * 60_000)
    assert p.cluster.termination_reason.code == "BOOTSTRAP_TIMEOUT"
    assert p.cluster.state == State.TERMINATING


def test_permanent_delete_removes_the_document_after_the_nodes() -> None:
    c = dom.permanent_delete(running(new()), user="u", now=1)
    assert c.deleted
    assert not rec.plan(c, nodes(), now=2).delete_document
    assert rec.plan(c, [], now=3).delete_document


def test_inactivity_termination_message() -> None:
    reason = dom.TerminationReason(code="INACTIVITY", parameters={"inactivity_duration_min": "120"})
    c = dom.terminate(running(new()), reason=reason, user=None, now=1)
    done = rec.plan(c, [], now=2).cluster
    assert done.state_message == "Inactive cluster terminated (inactive for 120 minutes)."


def test_end_of_a_downsize_is_saved_even_when_the_snapshot_is_already_current() -> None:
    c = running(new(num_workers=2), workers=2)
    c = dom.resize(c, num_workers=1, autoscale=None, user="u", now=1)
    # an earlier evaluation already saw the removed worker gone and saved that snapshot
    seen = rec.plan(c, nodes(workers=("RUNNING", "STOPPING")), now=2).cluster
    assert seen.state == State.RESIZING
    p = rec.plan(seen, nodes(workers=("RUNNING",)), now=3)
    assert p.cluster.state == State.RUNNING and p.changed


def test_a_starting_cluster_without_pool_nodes_fails_with_the_pool_reason() -> None:
    c = new(instance_pool_id="P")
    p = rec.plan(c, [], now=2000)
    assert p.actions == [rec.StartDriver(), rec.AddWorkers(2)]
    out = rec.nodes_unavailable(
        p,
        code="INSTANCE_POOL_MAX_CAPACITY_REACHED",
        message="full",
        live_workers=0,
        now=2000,
        instance_pool_id="P",
    )
    c2 = out.cluster
    assert c2.state == State.TERMINATING and c2.desired == "TERMINATED"
    assert c2.termination_reason.code == "INSTANCE_POOL_MAX_CAPACITY_REACHED"
    assert c2.termination_reason.type == "CLIENT_ERROR"
    assert c2.termination_reason.parameters == {"instance_pool_id": "P"}
    assert out.actions == [] and out.requeue and out.changed
    # a new version with its own events (ids distinct)
    ids = [e["id"] for e in c2.pending_events]
    assert len(ids) == len(set(ids)) and c2.pending_events[-1]["type"] == "TERMINATING"
    # the next reconcile stops what it took and ends TERMINATED with the reason kept
    done = rec.plan(c2, [], now=3000).cluster
    assert done.state == State.TERMINATED
    assert done.termination_reason.code == "INSTANCE_POOL_MAX_CAPACITY_REACHED"


def test_a_running_cluster_that_cannot_grow_keeps_its_size_with_add_nodes_failed() -> None:
    c = running(new(num_workers=1, instance_pool_id="P"), workers=1)
    c = dom.resize(c, num_workers=3, autoscale=None, user="u", now=5000)
    p = rec.plan(c, nodes(workers=("RUNNING",)), now=6000)
    assert p.actions == [rec.AddWorkers(2)]
    out = rec.nodes_unavailable(
        p, code="INSTANCE_POOL_MAX_CAPACITY_REACHED", message="full", live_workers=1, now=6000
    )
    c2 = out.cluster
    assert (c2.state, c2.target_workers, c2.desired) == (State.RUNNING, 1, "RUNNING")
    [failed] = [e for e in c2.pending_events if e["type"] == "ADD_NODES_FAILED"]
    assert failed["details"]["target_num_workers"] == 3
    assert failed["details"]["reason"]["code"] == "INSTANCE_POOL_MAX_CAPACITY_REACHED"
    # converged at the size it has: the next plan does nothing
    assert rec.plan(c2, nodes(workers=("RUNNING",)), now=7000).actions == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SPARK_HOME": "/x"}, "SPARK_HOME is set by sparkplane"),
        ({"SPARKPLANE_AGENT_TOKEN": "x"}, "SPARKPLANE_AGENT_TOKEN is set by sparkplane"),
        ({"1X": "1"}, "not an environment variable name"),
        ({"A-B": "1"}, "not an environment variable name"),
        ({"X": "a\nb"}, "line break"),
        ({"BASH_ENV": "/tmp/x.sh"}, "BASH_ENV cannot be set: shells"),
        ({"LD_PRELOAD": "/tmp/x.so"}, "LD_PRELOAD cannot be set: the dynamic loader"),
        ({"JAVA_TOOL_OPTIONS": "-javaagent:x.jar"}, "JAVA_TOOL_OPTIONS cannot be set"),
        ({"PYTHONSTARTUP": "/tmp/x.py"}, "PYTHONSTARTUP cannot be set: Python"),
        ({"PATH": "/tmp"}, "PATH is set by sparkplane"),
    ],
)
def test_spark_env_vars_the_nodes_cannot_take_are_refused(env: dict, message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=f"Invalid spark_env_vars: .*{message}"):
        spec(spark_env_vars={"FINE": "1", **env})
    assert spec(spark_env_vars={"MY_FLAG": "a b=c"}).spark_env_vars == {"MY_FLAG": "a b=c"}
    inert = {"MY_FLAG": "$(touch /tmp/x)", "PYSPARK_PYTHON": "/usr/bin/python3"}
    assert spec(spark_env_vars=inert).spark_env_vars == inert


# ---------------------------------------------------------------- one scale set: 1,000 workers


def test_worker_cap_by_provisioner() -> None:
    assert dom.worker_cap("arm") == dom.SCALE_SET_MAX_WORKERS == 1000
    assert dom.worker_cap("local") == dom.worker_cap("records") == dom.MAX_WORKERS


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"num_workers": 1001}, "num_workers (1001)"),
        (
            {"num_workers": None, "autoscale": {"min_workers": 1, "max_workers": 10000}},
            "max_workers",
        ),
    ],
)
def test_arm_clusters_ask_for_at_most_one_scale_set(kw: dict[str, object], field: str) -> None:
    body = {"spark_version": "4.1.x-scala2.13", "node_type_id": "small", "num_workers": 2, **kw}
    body = {k: v for k, v in body.items() if v is not None}
    parsed = dom.parse_spec(body)
    with pytest.raises(InvalidParameterValue, match=r"1000 workers .*scale set") as e:
        dom.validate_spec(parsed, node_types=NODE_TYPES, spark_versions=VERSIONS, max_workers=1000)
    assert field in str(e.value)
    # Other provisioners keep Databricks' own limit.
    dom.validate_spec(parsed, node_types=NODE_TYPES, spark_versions=VERSIONS)
    ok = {**body, "num_workers": 1000} if "num_workers" in body else body
    if "autoscale" not in ok:
        dom.validate_spec(
            dom.parse_spec(ok), node_types=NODE_TYPES, spark_versions=VERSIONS, max_workers=1000
        )


def test_resize_past_one_scale_set_is_refused_at_the_request() -> None:
    c = running(new())
    with pytest.raises(InvalidParameterValue, match="1000"):
        dom.resize(c, num_workers=1500, autoscale=None, user="u", now=5, max_workers=1000)
    auto = dom.AutoScale(min_workers=1, max_workers=2000)
    with pytest.raises(InvalidParameterValue, match=r"autoscale\.max_workers"):
        dom.resize(c, num_workers=None, autoscale=auto, user="u", now=5, max_workers=1000)
    assert dom.resize(c, num_workers=1000, autoscale=None, user="u", now=5, max_workers=1000)


def test_the_catalog_of_an_arm_control_plane_caps_workers() -> None:
    """What wiring builds for SPARKPLANE_PROVISIONER=arm: the API answers INVALID_PARAMETER_VALUE
    (HTTP 400) at create, edit and for job clusters, before anything is stored."""
    from shared.ports import NodeType, SparkVersion
    from shared.services.clusters import Catalog

    class Offer:
        def node_types(self) -> list[NodeType]:
            return [NodeType("small", 4, 16384, "small")]

        def spark_versions(self) -> list[SparkVersion]:
            return [SparkVersion("4.1.x-scala2.13", "4.1")]

    catalog = Catalog(Offer(), dom.worker_cap("arm"))  # type: ignore[arg-type]
    body = {"spark_version": "4.1.x-scala2.13", "node_type_id": "small", "num_workers": 5000}
    with pytest.raises(InvalidParameterValue) as e:
        catalog.validate(dom.parse_spec(body))
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
