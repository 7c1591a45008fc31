"""RUNNING means ready in Azure too: a cluster on ARM (through FakeArm, the real services and
the embedded bus) stays PENDING while its driver VM runs without its agent's `ready` report,
becomes RUNNING on the reconcile that report triggers, and fails with a named permanent
failure when the report never comes within READY_TIMEOUT_S."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from shared.adapters.embedded_bus import EmbeddedBus
from shared.adapters.sqlite_store import SqliteStore
from shared.domain.azure_nodes import NOT_READY, READY_TIMEOUT_S
from shared.domain.states import State
from shared.services.auth import Principal
from shared.settings import Settings
from shared.wiring import Container
from tests.fake_arm import BASE, FakeAgents, FakeArm, arm_provisioner
from tests.support import FakeClock

# FakeArm's VMs are created at this moment: the simulated time starts there.
CREATED_MS = int(datetime(2030, 1, 1, tzinfo=UTC).timestamp() * 1000)
SPEC = {"spark_version": "4.1.x-scala2.13", "node_type_id": "Standard_D4ds_v5"}


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock(CREATED_MS)
        self.arm = FakeArm()
        store = SqliteStore(tmp_path / "store.db", clock=self.clock)
        self.bus = EmbeddedBus(tmp_path / "bus.db", clock=self.clock)
        prov = arm_provisioner(self.arm, clock=lambda: self.clock.ms / 1000, store=store)
        self.c = Container(
            settings=Settings(data_dir=tmp_path / "data", agent_callback_url=BASE),
            store=store,
            bus=self.bus,
            provisioner=prov,
            clock=self.clock,
        )
        assert self.c.ready_reports is prov  # the capability is wired to the heartbeats
        self.agents = FakeAgents(self.arm)
        self.p = Principal("ws1", "admin", "t")
        self.c.admin.create_workspace(
            {"name": "one", "workspace_id": "ws1", "region": "westeurope"}
        )
        self.arm.tick(2)

    def drain(self) -> int:
        """Handle the lifecycle messages due now; how many."""
        n = 0
        while (d := self.bus.receive("cluster-lifecycle")) is not None:
            self.c.lifecycle.handle(d.body)
            self.bus.complete(d)
            n += 1
        return n

    def state(self, cid: str) -> State:
        got = self.c.repo.load("ws1", cid)
        assert got is not None
        return got[0].state

    def events(self, cid: str) -> list[dict[str, object]]:
        return self.c.clusters.events(self.p, {"cluster_id": cid, "order": "ASC"})["events"]  # type: ignore[no-any-return]


def test_pending_until_the_driver_reports_ready_then_running(tmp_path: Path) -> None:
    w = World(tmp_path)
    cid = w.c.clusters.create(w.p, {**SPEC, "cluster_name": "c", "num_workers": 1})
    for _ in range(10):  # ARM makes everything; the reconciles come and go
        w.drain()
        w.arm.tick()
        w.clock.advance(5000)
        w.c.lifecycle.sweep()
    # The driver VM and the worker run in ARM, but Spark has not said it is ready.
    (vm,) = [r for r in w.arm.find("/virtualMachines") if r["tags"]["ClusterId"] == cid]
    assert vm["properties"]["provisioningState"] == "Succeeded"
    assert w.state(cid) == State.PENDING
    assert "RUNNING" not in [e["type"] for e in w.events(cid)]

    # The agent's report (Spark Connect answered, one executor) triggers the reconcile that
    # makes it RUNNING: no ARM step, no timer in between.
    w.agents.heartbeat(w.c.utilization)
    assert w.drain() >= 1
    assert w.state(cid) == State.RUNNING
    cluster = w.c.repo.load("ws1", cid)[0]  # type: ignore[index]
    assert len(cluster.executors) == 1
    assert cluster.driver is not None and cluster.driver["node_id"] == f"sp-{cid}-driver"


def test_a_driver_never_ready_fails_the_start_with_a_permanent_failure(tmp_path: Path) -> None:
    w = World(tmp_path)
    cid = w.c.clusters.create(w.p, {**SPEC, "cluster_name": "c", "num_workers": 0})
    w.agents.silent.add(cid)  # its bootstrap broke: the agent never reports
    step_ms = 30_000
    for _ in range(int(READY_TIMEOUT_S * 1000 // step_ms) + 4):
        w.drain()
        w.arm.tick()
        w.agents.heartbeat(w.c.utilization)
        w.clock.advance(step_ms)
        w.c.lifecycle.sweep()
        if w.state(cid) != State.PENDING:
            break
    assert w.state(cid) in (State.TERMINATING, State.TERMINATED)
    got = w.c.repo.load("ws1", cid)
    assert got is not None
    reason = got[0].termination_reason
    assert reason is not None
    assert (reason.code, reason.type) == (NOT_READY.code, "SERVICE_FAULT")
    assert reason.parameters == {"failure_kind": "permanent"}
    types = [e["type"] for e in w.events(cid)]
    assert "DRIVER_UNAVAILABLE" in types and "TERMINATING" in types
    # It failed on its own bound, before the planner's generic one (BOOTSTRAP_TIMEOUT).
    assert w.clock.ms - CREATED_MS < 10 * 60_000


def test_a_worker_agents_disk_report_by_its_instance_name_grows_that_worker(
    tmp_path: Path,
) -> None:
    """A worker's node agent knows its VM's name (the scale-set instance), not its node id
    (a slot): its disk reports still reach the node (shared/services/utilization.py)."""
    w = World(tmp_path)
    spec = {**SPEC, "cluster_name": "c", "num_workers": 1, "enable_elastic_disk": True}
    cid = w.c.clusters.create(w.p, spec)
    for _ in range(12):
        w.drain()
        w.arm.tick()
        w.agents.heartbeat(w.c.utilization)
        w.clock.advance(5000)
        w.c.lifecycle.sweep()
    assert w.state(cid) == State.RUNNING
    cluster = w.c.repo.load("ws1", cid)[0]  # type: ignore[index]
    (worker,) = cluster.executors
    assert worker["node_id"] == f"{cid}-worker-0"
    instance = f"sp-{cid}-workers_0"
    assert worker["instance_id"] == instance
    total = 150 * 2**30  # the D4ds_v5's temporary disk
    agent = Principal("", "agent", "a", role="agent", scope=cid)
    disk = {"node_id": instance, "used_bytes": total - 2**20, "total_bytes": total}
    w.c.utilization.heartbeat(agent, {"cluster_id": cid, "disk": disk})
    w.arm.take()
    assert w.c.utilization.autoscale_tick()["disk_steps"] == 1
    puts = [r for r in w.arm.take() if r.method == "PUT"]
    assert [r.path.rsplit("/", 2)[-2:] for r in puts] == [["virtualMachines", "0"]]
    # The cluster knows the growth by the node id.
    cluster = w.c.repo.load("ws1", cid)[0]  # type: ignore[index]
    assert list(cluster.disk_targets) == [worker["node_id"]]
