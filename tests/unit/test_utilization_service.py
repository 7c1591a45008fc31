"""Heartbeats, the autoscaling timer and the idle timer, in-process with the real services
(SQLite store, record provisioner) and a fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from shared.adapters.records import RecordProvisioner
from shared.adapters.sqlite_store import SqliteStore
from shared.domain.states import State
from shared.errors import InvalidParameterValue, PermissionDenied
from shared.ports import OutMessage, PreconditionFailed
from shared.services.auth import Auth
from shared.services.clusters import Catalog, ClusterService
from shared.services.documents import ClusterRepo
from shared.services.lifecycle import Lifecycle
from shared.services.pools import PoolService
from shared.services.utilization import Utilization
from shared.settings import Settings
from tests.support import FakeClock


class RecordingBus:
    def __init__(self) -> None:
        self.sent: list[OutMessage] = []

    def send(self, queue: str, messages: Sequence[OutMessage]) -> None:
        self.sent.extend(messages)


class World:
    def __init__(self, tmp: Path, **settings: object) -> None:
        self.clock = FakeClock()
        self.settings = Settings(data_dir=tmp, **settings)  # type: ignore[arg-type]
        self.store = SqliteStore(tmp / "store.db", clock=self.clock.now_ms)
        self.bus = RecordingBus()
        self.prov = RecordProvisioner(tmp / "records.db", boot_s=1, clock=self.clock.now_ms)
        catalog = Catalog(self.prov)
        self.pools = PoolService(
            self.store, self.bus, catalog, self.prov, self.clock, self.settings
        )
        self.clusters = ClusterService(
            self.store, self.bus, catalog, self.clock, self.settings, pools=self.pools
        )
        self.repo = ClusterRepo(self.store, self.settings)
        self.auth = Auth(self.store, self.clock)
        self.lifecycle = Lifecycle(
            self.repo, self.bus, self.prov, self.clock, self.settings, self.auth, self.pools
        )
        self.util = Utilization(
            self.store, self.repo, self.clusters, self.clock, self.settings, self.prov
        )
        self.auth.ensure_workspace("w", "w")
        self.user = self.auth.authenticate("Bearer " + self.auth.issue_token("w", user="u")[0])

    def running_cluster(self, **spec: object) -> str:
        body = {"spark_version": "4.1.x-scala2.13", "node_type_id": "rec-small", **spec}
        cid = self.clusters.create(self.user, body)
        for _ in range(4):
            self.lifecycle.reconcile("w", cid)
            self.clock.ms += 2000
        assert self.state(cid) == State.RUNNING
        return cid

    def state(self, cid: str) -> State:
        return State(self.clusters.get(self.user, cid)["state"])

    def agent(self, cid: str):  # type: ignore[no-untyped-def]
        token, _ = self.auth.issue_token(f"agent:{cid}", user="agent", role="agent", scope=cid)
        return self.auth.authenticate("Bearer " + token)

    def events(self, cid: str) -> list[dict]:
        return self.clusters.events(self.user, {"cluster_id": cid, "limit": 500})["events"]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, autoscale_params='{"expected_boot_s": 0}')


def test_agent_token_reports_only_for_its_own_cluster(world: World) -> None:
    a = world.running_cluster(num_workers=1)
    b = world.running_cluster(num_workers=1)
    agent = world.agent(a)
    world.util.heartbeat(agent, {"cluster_id": a, "sample": {"running_tasks": 3}})
    with pytest.raises(PermissionDenied):
        world.util.heartbeat(agent, {"cluster_id": b, "sample": {}})
    with pytest.raises(PermissionDenied):
        world.util.heartbeat(world.user, {"cluster_id": a, "sample": {}})
    got = world.clusters.get(world.user, a)
    assert got["last_activity_time"] == world.clock.ms
    assert "last_activity_time" not in world.clusters.get(world.user, b)


# A sample of a cluster whose 2 slots are busy with 20 tasks waiting.
BACKLOG = {"running_tasks": 2, "pending_tasks": 20, "active_jobs": 1, "total_slots": 2}


def test_backlog_scales_up_with_events_and_a_reconcile(world: World) -> None:
    cid = world.running_cluster(autoscale={"min_workers": 1, "max_workers": 3})
    agent = world.agent(cid)
    for _ in range(3):
        world.util.heartbeat(agent, {"cluster_id": cid, "sample": BACKLOG})
        world.clock.ms += 5000
    sent = len(world.bus.sent)
    assert world.util.autoscale_tick() == {"clusters": 1, "changed": 1, "disk_steps": 0}
    got = world.clusters.get(world.user, cid)
    assert got["state"] == "RESIZING"
    types = [e["type"] for e in world.events(cid)]
    assert types[:2] == ["RESIZING", "AUTOSCALING_STATS_REPORT"]  # newest first
    resizing = world.events(cid)[0]["details"]
    assert resizing["cause"] == "AUTOSCALE" and resizing["target_num_workers"] == 3
    assert len(world.bus.sent) == sent + 1  # reconcile sent
    # converges to 3 real (record) workers
    for _ in range(4):
        world.lifecycle.reconcile("w", cid)
        world.clock.ms += 2000
    assert len(world.clusters.get(world.user, cid)["executors"]) == 3


def test_a_resizing_cluster_cancels_the_workers_of_a_backlog_gone_before_they_joined(
    world: World,
) -> None:
    cid = world.running_cluster(autoscale={"min_workers": 1, "max_workers": 4})
    agent = world.agent(cid)
    world.util.heartbeat(agent, {"cluster_id": cid, "sample": BACKLOG})
    world.clock.ms += 10_000
    assert world.util.autoscale_tick()["changed"] == 1
    assert world.clusters.get(world.user, cid)["state"] == "RESIZING"
    # A larger backlog while the workers boot: the resize goes on as asked (no second step).
    world.util.heartbeat(agent, {"cluster_id": cid, "sample": {**BACKLOG, "pending_tasks": 40}})
    world.clock.ms += 10_000
    assert world.util.autoscale_tick() == {"clusters": 1, "changed": 0, "disk_steps": 0}
    # The backlog is gone before any new worker joined: they are cancelled at once.
    idle_ish = {"running_tasks": 1, "pending_tasks": 0, "active_jobs": 1, "total_slots": 2}
    world.util.heartbeat(agent, {"cluster_id": cid, "sample": idle_ish})
    world.clock.ms += 1000
    assert world.util.autoscale_tick()["changed"] == 1
    got = world.clusters.get(world.user, cid)
    assert got["state"] == "RESIZING"
    resizing = world.events(cid)[0]["details"]
    assert resizing == {"current_num_workers": 4, "target_num_workers": 1, "cause": "AUTOSCALE"}
    for _ in range(3):
        world.lifecycle.reconcile("w", cid)
        world.clock.ms += 2000
    got = world.clusters.get(world.user, cid)
    assert got["state"] == "RUNNING" and len(got["executors"]) == 1
    assert "UPSIZE_COMPLETED" not in [e["type"] for e in world.events(cid)]


def test_a_job_cluster_takes_the_job_cluster_preset(world: World) -> None:
    """A run's job cluster keeps its joining workers (JOB_CLUSTER_PARAMS), where an
    all-purpose cluster would cancel them (the test above)."""
    body = {
        "spark_version": "4.1.x-scala2.13",
        "node_type_id": "rec-small",
        "autoscale": {"min_workers": 1, "max_workers": 4},
    }
    cid = "job-run-1"
    assert world.clusters.create_for_job(world.user, cid, body)
    for _ in range(4):
        world.lifecycle.reconcile("w", cid)
        world.clock.ms += 2000
    assert world.state(cid) == State.RUNNING
    agent = world.agent(cid)
    world.util.heartbeat(agent, {"cluster_id": cid, "sample": BACKLOG})
    world.clock.ms += 10_000
    assert world.util.autoscale_tick()["changed"] == 1
    idle_ish = {"running_tasks": 1, "pending_tasks": 0, "active_jobs": 1, "total_slots": 2}
    world.util.heartbeat(agent, {"cluster_id": cid, "sample": idle_ish})
    world.clock.ms += 1000
    assert world.util.autoscale_tick()["changed"] == 0
    assert world.clusters.get(world.user, cid)["state"] == "RESIZING"


def test_a_sample_older_than_the_converged_resize_cancels_nothing(world: World) -> None:
    cid = world.running_cluster(autoscale={"min_workers": 1, "max_workers": 4})
    agent = world.agent(cid)
    world.util.heartbeat(agent, {"cluster_id": cid, "sample": BACKLOG})
    world.clock.ms += 10_000
    assert world.util.autoscale_tick()["changed"] == 1
    # One executor's slots and nothing pending, reported before the new workers joined.
    one = {"running_tasks": 0, "pending_tasks": 0, "active_jobs": 0, "total_slots": 2}
    world.util.heartbeat(agent, {"cluster_id": cid, "sample": one})
    for _ in range(3):
        world.lifecycle.reconcile("w", cid)
        world.clock.ms += 2000
    assert world.state(cid) == State.RUNNING
    assert world.util.autoscale_tick()["changed"] == 0
    # The same report after the resize converged: 3 of the 4 workers run no executor.
    world.util.heartbeat(agent, {"cluster_id": cid, "sample": one})
    world.clock.ms += 1000
    assert world.util.autoscale_tick()["changed"] == 1
    assert world.events(cid)[0]["details"]["target_num_workers"] == 1


def test_no_samples_no_change(world: World) -> None:
    world.running_cluster(autoscale={"min_workers": 1, "max_workers": 3})
    assert world.util.autoscale_tick() == {"clusters": 1, "changed": 0, "disk_steps": 0}


def test_idle_cluster_is_terminated_busy_one_never(tmp_path: Path) -> None:
    w = World(tmp_path, idle_minute_s=1.0)
    idle = w.running_cluster(num_workers=1, autotermination_minutes=10)
    busy = w.running_cluster(num_workers=1, autotermination_minutes=10)
    never = w.running_cluster(num_workers=1)
    agent = w.agent(busy)
    for _ in range(12):  # 12 "minutes" of 1 s, the busy cluster reporting a long query
        w.clock.ms += 1000
        w.util.heartbeat(agent, {"cluster_id": busy, "sample": {"active_queries": 1}})
    assert w.util.idle_tick() == {"terminated": 1}
    assert w.state(idle) == State.TERMINATING
    assert w.state(busy) == State.RUNNING and w.state(never) == State.RUNNING
    [term] = [e for e in w.events(idle) if e["type"] == "TERMINATING"]
    reason = term["details"]["reason"]
    assert reason["code"] == "INACTIVITY" and reason["type"] == "SUCCESS"
    assert int(reason["parameters"]["inactivity_duration_min"]) >= 10
    for _ in range(3):
        w.lifecycle.reconcile("w", idle)
        w.clock.ms += 1000
    got = w.clusters.get(w.user, idle)
    assert got["state"] == "TERMINATED"
    assert got["state_message"].startswith("Inactive cluster terminated (inactive for ")


def test_agent_token_is_issued_with_the_driver_and_revoked_at_the_end(world: World) -> None:
    cid = world.running_cluster(num_workers=0)
    page = world.store.list("token-info", f"agent:{cid}", page_size=10, page_token=None)
    [info] = page.items
    assert info.body["role"] == "agent" and info.body["scope"] == cid
    world.clusters.delete(world.user, {"cluster_id": cid})
    for _ in range(3):
        world.lifecycle.reconcile("w", cid)
        world.clock.ms += 1000
    assert world.state(cid) == State.TERMINATED
    assert not world.store.list("token-info", f"agent:{cid}", page_size=10, page_token=None).items
    assert world.store.get("token", info.body["hash"], info.body["hash"]) is None


def test_sweep_notices_a_dead_worker_and_the_reconcile_replaces_it(world: World) -> None:
    cid = world.running_cluster(num_workers=2)
    assert world.lifecycle.sweep()["kicked"] == 0  # healthy: nothing to do
    victim = world.clusters.get(world.user, cid)["executors"][0]["node_id"]
    world.prov.lose_node(victim)
    sent = len(world.bus.sent)
    assert world.lifecycle.sweep()["kicked"] == 1
    assert world.bus.sent[sent].session_id == cid
    for _ in range(4):
        world.lifecycle.reconcile("w", cid)
        world.clock.ms += 2000
    got = world.clusters.get(world.user, cid)
    assert got["state"] == "RUNNING" and len(got["executors"]) == 2
    assert victim not in {e["node_id"] for e in got["executors"]}
    lost = [e for e in world.events(cid) if e["type"] == "NODES_LOST"]
    assert len(lost) == 1 and lost[0]["details"]["instance_id"] == victim


def test_local_storage_grows_before_a_node_runs_out_with_an_event_per_step(
    tmp_path: Path,
) -> None:
    w = World(tmp_path, storage_min_step_mb=1, storage_max_gb=128)
    cid = w.running_cluster(num_workers=1, enable_elastic_disk=True)
    plain = w.running_cluster(num_workers=1)
    worker = w.clusters.get(w.user, cid)["executors"][0]["node_id"]
    agent = w.agent(cid)
    gib = 2**30

    def report(used: float, total: int, node: str = worker, cluster: str = cid) -> None:
        w.util.heartbeat(
            agent if cluster == cid else w.agent(cluster),
            {
                "cluster_id": cluster,
                "disk": {"node_id": node, "used_bytes": int(used), "total_bytes": total},
            },
        )

    def disk() -> int:
        return int(w.prov.observe(cid)[1].attrs["disk_total_bytes"])

    assert disk() == 64 * gib  # the record provisioner's nodes start with 64 GiB
    report(0.5 * 64 * gib, 64 * gib)
    assert w.util.autoscale_tick()["disk_steps"] == 0  # half full: nothing to do
    report(0.8 * 64 * gib, 64 * gib)
    assert w.util.autoscale_tick()["disk_steps"] == 1
    [grown] = [e for e in w.events(cid) if e["type"] == "EXPANDED_DISK"]
    assert grown["details"]["instance_id"] == worker
    assert grown["details"]["previous_disk_size"] == 64 * gib
    assert grown["details"]["disk_size"] == 128 * gib == disk()  # the provisioner grew it
    # the agent still reports the old size (the tick ran before its next report): no new step
    assert w.util.autoscale_tick()["disk_steps"] == 0
    # full again at the largest size: DID_NOT_EXPAND_DISK, once
    report(0.9 * 128 * gib, 128 * gib)
    assert w.util.autoscale_tick()["disk_steps"] == 1
    assert w.util.autoscale_tick()["disk_steps"] == 0
    kinds = [e["type"] for e in w.events(cid)]
    assert (kinds.count("EXPANDED_DISK"), kinds.count("DID_NOT_EXPAND_DISK")) == (1, 1)
    # reports of unknown nodes and of clusters without elastic disk change nothing
    report(10 * gib, gib, node="gone")
    report(10 * gib, gib, cluster=plain, node="x")
    assert w.util.autoscale_tick()["disk_steps"] == 0
    assert not [e for e in w.events(plain) if "DISK" in e["type"]]


def test_a_heartbeat_needs_a_sample_or_a_disk_report(world: World) -> None:
    cid = world.running_cluster(num_workers=1)
    agent = world.agent(cid)
    with pytest.raises(InvalidParameterValue, match="sample, a disk report or both"):
        world.util.heartbeat(agent, {"cluster_id": cid})
    with pytest.raises(InvalidParameterValue, match="Invalid report"):
        world.util.heartbeat(agent, {"cluster_id": cid, "disk": {"node_id": "n", "used_bytes": -1}})
    with pytest.raises(InvalidParameterValue, match="Invalid report"):
        world.util.heartbeat(agent, {"cluster_id": cid, "disk": [1]})


def test_autoscaling_from_a_pool_grows_only_as_far_as_the_pool_can_give(world: World) -> None:
    pool_id = world.pools.create(
        world.user,
        {"instance_pool_name": "p", "node_type_id": "rec-small", "max_capacity": 4},
    )["instance_pool_id"]
    cid = world.running_cluster(
        instance_pool_id=pool_id, autoscale={"min_workers": 1, "max_workers": 8}
    )
    world.pools.reconcile("w", pool_id)  # stats: driver + 1 worker used, room for 2 more
    assert world.pools.get(world.user, pool_id)["stats"]["used_count"] == 2
    agent = world.agent(cid)
    for _ in range(3):
        world.util.heartbeat(
            agent,
            {
                "cluster_id": cid,
                "sample": {"running_tasks": 2, "pending_tasks": 50, "total_slots": 2},
            },
        )
        world.clock.ms += 5000
    assert world.util.autoscale_tick()["changed"] == 1
    resizing = next(e for e in world.events(cid) if e["type"] == "RESIZING")
    assert resizing["details"]["target_num_workers"] == 3  # not 8: 1 + the pool's 2
    for _ in range(4):
        world.lifecycle.reconcile("w", cid)
        world.clock.ms += 2000
    got = world.clusters.get(world.user, cid)
    assert got["state"] == "RUNNING" and len(got["executors"]) == 3
    assert "ADD_NODES_FAILED" not in [e["type"] for e in world.events(cid)]


def first_save_loses(world: World) -> list[int]:
    """Make the next cluster save lose to a concurrent write made 5 s later; returns the list
    that gets the clock's time of the lost attempt."""
    repo = world.clusters.repo
    save = repo.save
    lost: list[int] = []

    def save_once_lost(old, rec, new):  # type: ignore[no-untyped-def]
        if not lost:
            lost.append(world.clock.ms)
            world.clock.ms += 5000
            raise PreconditionFailed("a concurrent write")
        return save(old, rec, new)

    repo.save = save_once_lost  # type: ignore[method-assign]
    return lost


def test_a_command_retried_after_a_concurrent_write_is_stamped_when_it_applies(
    world: World,
) -> None:
    """A restart whose first save loses to a write made 5 s later: its event has the time of
    the attempt that lands (a kill -9 trial saw an EDITED event stamped before the RUNNING
    event written in between, which put them out of order in the events API)."""
    cid = world.running_cluster(num_workers=1)
    lost = first_save_loses(world)
    world.clusters.restart(world.user, {"cluster_id": cid})
    (event,) = [e for e in world.events(cid) if e["type"] == "RESTARTING"]
    assert event["timestamp"] == lost[0] + 5000


def test_a_timer_command_retried_after_a_concurrent_write_is_stamped_when_it_applies(
    tmp_path: Path,
) -> None:
    """The same for the timers' commands: the autoscaler's resize and idle termination are
    decided on the tick's clock but stamped when they land."""
    w = World(tmp_path, idle_minute_s=1.0, autoscale_params='{"expected_boot_s": 0}')
    busy = w.running_cluster(autoscale={"min_workers": 1, "max_workers": 3})
    idle = w.running_cluster(num_workers=1, autotermination_minutes=10)
    agent = w.agent(busy)
    for _ in range(12):
        w.util.heartbeat(agent, {"cluster_id": busy, "sample": BACKLOG})
        w.clock.ms += 1000
    lost = first_save_loses(w)
    assert w.util.autoscale_tick()["changed"] == 1
    (event,) = [e for e in w.events(busy) if e["type"] == "RESIZING"]
    assert event["timestamp"] == lost[0] + 5000
    lost = first_save_loses(w)
    assert w.util.idle_tick() == {"terminated": 1}
    (event,) = [e for e in w.events(idle) if e["type"] == "TERMINATING"]
    assert event["timestamp"] == lost[0] + 5000
