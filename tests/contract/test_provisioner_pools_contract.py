"""The `Provisioner` contract, instance pools and local storage: every adapter passes it.

Add an adapter by adding one entry to `_ADAPTERS`: a function that builds an `Adapter` (the
provisioner, how long its slowest transition may take, how to close it, what it can do). The
tests run on the wall clock and poll with `wait` until a condition holds, so slow real
adapters fit too; each poll calls `Adapter.advance`, which moves a simulated backend's time
along. They use fresh pool and cluster ids, so they may share a backend with other tests.

Capabilities: an adapter without instance pools (`Adapter.pools` False) must refuse them
(ProvisionerUnsupported); each pool test (`@pool_test`) asserts that refusal instead.

What the port asks of its callers, and the tests therefore do too:
- A cluster's driver is started before its workers (the planner always starts the driver
  first; an adapter may refuse add_workers without one, or start none until the driver's
  resources exist: the workers join the driver's master). Where a test counts pool nodes,
  the driver is a fresh one (no `driver_pool`), so the pool's counts are the workers' alone.
- Every call returns quickly and the slow work goes on after it: right after a call a node
  may already be further along than the call left it (after remove_idle it is STOPPING or
  already gone; after remove_workers or stop_cluster a pool node is RETURNING or already
  idle again). The tests accept exactly those states, then wait for the end state.

Adapters: "records" (RecordProvisioner: rows in SQLite, fast), "arm" (ArmProvisioner
through the real SDK clients against tests/fake_arm.py's `FakeArm`, fast: its operations
move one step per `wait` poll, and its driver agents report ready (`FakeAgents`); no instance
pools) and "local" (LocalSparkProvisioner: real
Spark standalone processes, marked `spark`; it needs Java 17+ and pyspark, skips without
them, except in CI where it fails). The local run is kept short: few nodes where the records
adapter can take many (`Adapter.concurrency_nodes`). A test an adapter fails for a known bug
is a strict xfail for that adapter alone (`adapter_params`), its reason the bug.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from shared.adapters.local_spark import (
    ENV_DATA_DIR,
    JavaRequirementError,
    LocalSparkProvisioner,
    SparkHomeError,
)
from shared.adapters.records import RecordProvisioner
from shared.domain import spark_auth
from shared.ports import (
    Node,
    NodeRequest,
    PoolCapacityReached,
    PoolRequest,
    Provisioner,
    ProvisionerUnsupported,
)
from tests.fake_arm import FakeAgents, FakeArm, arm_provisioner

T = TypeVar("T")
WORKSPACE = "w-contract"


@dataclass
class Adapter:
    provisioner: Provisioner
    # The longest any transition (boot, warm boot, stop) may take.
    timeout_s: float
    # Kill a node (a test hook); None: the adapter cannot.
    lose_node: Callable[[str], None] | None = None
    close: Callable[[], None] = lambda: None
    # The concurrency test: nodes each of two threads asks for at once, in how many rounds
    # (a real adapter starts every one of them).
    concurrency_nodes: int = 20
    concurrency_rounds: int = 10
    # How often `wait` polls (a real adapter's observe does real work).
    poll_s: float = 0.01
    # Capabilities: False: the adapter refuses instance pools (ProvisionerUnsupported), and
    # each pool test asserts that refusal instead.
    pools: bool = True
    # Called by `wait` each poll: moves a simulated backend's time along (ARM's operations).
    advance: Callable[[], None] = lambda: None


def _records(tmp_path: Path) -> Adapter:
    p = RecordProvisioner(tmp_path / "records.db", boot_s=0.1, stop_s=0.1, warm_boot_s=0.05)
    return Adapter(p, timeout_s=5.0, lose_node=p.lose_node)


def _arm(tmp_path: Path) -> Adapter:
    arm = FakeArm()
    p = arm_provisioner(arm)
    agents = FakeAgents(arm)
    p.create_workspace(WORKSPACE, "westeurope")
    for _ in range(10):  # the workspace deployment: a few steps
        if p.workspace_status(WORKSPACE) == "READY":
            break
        arm.tick()
    assert p.workspace_status(WORKSPACE) == "READY"

    def advance() -> None:
        arm.tick()
        agents.report(p)  # a driver is RUNNING once its agent reported ready

    return Adapter(p, timeout_s=5.0, pools=False, advance=advance)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _data_dir_processes(root: Path) -> list[psutil.Process]:
    """Live processes started for a data directory under `root` (they carry it in their
    environment)."""
    prefix = str(root.resolve()) + os.sep
    out = []
    for p in psutil.process_iter():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get(ENV_DATA_DIR, "").startswith(prefix):
                out.append(p)
        except psutil.Error:
            continue
    return out


def _local(tmp_path: Path) -> Adapter:
    try:
        # With a credential deriver, as the control plane builds it: idle pool nodes are hot.
        p = LocalSparkProvisioner(
            tmp_path / "local_spark",
            kill_grace_s=3,
            decommission_timeout_s=20,
            credentials=lambda cid: spark_auth.cluster_credentials("contract-key", cid),
        )
    except (JavaRequirementError, SparkHomeError) as e:
        if _in_ci():
            pytest.fail(f"the local Spark provisioner cannot run in CI: {e}", pytrace=False)
        pytest.skip(f"the local Spark provisioner cannot run: {e}")

    def node_pids(node_id: str) -> list[int] | None:
        for cluster_id in ("", *p.cluster_ids()):  # "": idle pool nodes
            pids = p.node_pids(cluster_id).get(node_id)
            if pids is not None:
                return pids
        return None

    def lose_node(node_id: str) -> None:
        """SIGKILL every process of the node, until none is left."""
        deadline = time.monotonic() + 10
        while pids := node_pids(node_id):
            if time.monotonic() > deadline:
                raise AssertionError(f"{node_id} still has processes {pids}")
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def close() -> None:
        """SIGKILL every process of the test's nodes once no background step starts one. Not
        a graceful stop: the nodes a stopped cluster gives back would first come up hot
        again (their JVMs started) only to be removed, which cost the suite up to 30 s a
        test; stopping is what the tests themselves check."""
        p.close()  # no background step starts a process from now on
        deadline = time.monotonic() + 10
        while (left := _data_dir_processes(tmp_path)) and time.monotonic() < deadline:
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            time.sleep(0.1)

    return Adapter(
        p,
        timeout_s=120.0,
        lose_node=lose_node,
        close=close,
        concurrency_nodes=2,
        concurrency_rounds=2,
        poll_s=0.2,
    )


_ADAPTERS: dict[str, Callable[[Path], Adapter]] = {
    "records": _records,
    "local": _local,
    "arm": _arm,
}
# Marks of the adapters that need more than Python.
_MARKS = {"local": pytest.mark.spark}


def adapter_params(**broken: str) -> list[object]:
    """One parameter per adapter, with its marks; `broken`: adapter name -> why it fails the
    test (a known bug: a strict xfail, so a fix shows)."""
    return [
        pytest.param(
            name,
            marks=[
                *([_MARKS[name]] if name in _MARKS else []),
                *([pytest.mark.xfail(strict=True, reason=broken[name])] if name in broken else []),
            ],
        )
        for name in sorted(_ADAPTERS)
    ]


@pytest.fixture(params=adapter_params())
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Adapter]:
    a = _ADAPTERS[request.param](tmp_path)
    try:
        yield a
    finally:
        a.close()


@pytest.fixture
def prov(adapter: Adapter) -> Provisioner:
    return adapter.provisioner


@dataclass
class Wait:
    timeout_s: float
    interval_s: float = 0.01
    advance: Callable[[], None] = lambda: None

    def until(self, probe: Callable[[], T], done: Callable[[T], bool], what: str = "") -> T:
        """Poll `probe` until `done(value)`; the last value is in the failure message."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            value = probe()
            if done(value):
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {self.timeout_s}s: {what}; last: {value!r}")
            time.sleep(self.interval_s)
            self.advance()

    def equals(self, probe: Callable[[], T], expected: T) -> T:
        return self.until(probe, lambda v: v == expected, f"expected {expected!r}")


@pytest.fixture
def wait(adapter: Adapter) -> Wait:
    return Wait(adapter.timeout_s, adapter.poll_s, adapter.advance)


# --------------------------------------------------------------------------------------------
# Helpers


def now_ms() -> int:
    return int(time.time() * 1000)


def new_pool(prov: Provisioner, max_capacity: int | None = None) -> PoolRequest:
    return PoolRequest(
        pool_id=f"pool-{uuid.uuid4().hex[:10]}",
        workspace_id=WORKSPACE,
        node_type_id=prov.node_types()[0].node_type_id,
        spark_version=prov.spark_versions()[0].key,
        max_capacity=max_capacity,
    )


def new_cluster(
    prov: Provisioner, pool: PoolRequest | None = None, driver_pool: PoolRequest | None = None
) -> NodeRequest:
    node_type = prov.node_types()[0].node_type_id
    return NodeRequest(
        cluster_id=f"c-{uuid.uuid4().hex[:10]}",
        workspace_id=WORKSPACE,
        node_type_id=node_type,
        driver_node_type_id=node_type,
        spark_version=prov.spark_versions()[0].key,
        pool=pool,
        driver_pool=driver_pool,
    )


def driver_runs(prov: Provisioner, wait: Wait, cluster_id: str) -> list[Node]:
    """Wait until the cluster's driver, started, runs; returns observe's nodes then."""
    return wait.until(
        lambda: prov.observe(cluster_id),
        lambda ns: [(n.role, n.status) for n in ns] == [("driver", "RUNNING")],
        "the driver runs",
    )


def pool_view(prov: Provisioner, pool_id: str) -> dict[str, tuple[str, str]]:
    """node_id -> (status, cluster_id)."""
    return {n.node_id: (n.status, n.cluster_id) for n in prov.pool_nodes(pool_id)}


def cluster_view(prov: Provisioner, cluster_id: str) -> dict[str, str]:
    """node_id -> status."""
    return {n.node_id: n.status for n in prov.observe(cluster_id)}


def worker_view(prov: Provisioner, cluster_id: str) -> dict[str, str]:
    """node_id -> status of the workers (the driver left out)."""
    return {n.node_id: n.status for n in prov.observe(cluster_id) if n.role == "worker"}


def idle_pool(
    prov: Provisioner, wait: Wait, count: int, max_capacity: int | None = None
) -> tuple[PoolRequest, list[str]]:
    """A pool with `count` IDLE nodes; returns it and their ids, in the order they started."""
    pool = new_pool(prov, max_capacity)
    ids = [n.node_id for n in prov.add_idle(pool, count)]
    assert len(ids) == count
    wait.equals(lambda: pool_view(prov, pool.pool_id), {n: ("IDLE", "") for n in ids})
    return pool, ids


def disk_bytes(prov: Provisioner, cluster_id: str, node_id: str) -> int:
    (node,) = [n for n in prov.observe(cluster_id) if n.node_id == node_id]
    return int(node.attrs.get("disk_total_bytes", "0"))


def assert_pools_refused(prov: Provisioner) -> None:
    """What a provisioner without instance pools does when asked for one: refuses it."""
    pool = new_pool(prov)
    with pytest.raises(ProvisionerUnsupported):
        prov.add_idle(pool, 1)
    with pytest.raises(ProvisionerUnsupported):
        prov.start_driver(new_cluster(prov, driver_pool=pool))
    with pytest.raises(ProvisionerUnsupported):
        prov.start_driver(new_cluster(prov, pool=pool))
    with pytest.raises(ProvisionerUnsupported):
        prov.add_workers(new_cluster(prov, pool=pool), 1)
    assert prov.pool_nodes(pool.pool_id) == []
    assert pool.pool_id not in prov.pool_ids()


def pool_test(test: Callable[..., None]) -> Callable[..., None]:
    """A test of instance pools: against an adapter without them (`Adapter.pools` False) it
    asserts the refusal instead (`assert_pools_refused`)."""
    sig = inspect.signature(test)
    takes_adapter = "adapter" in sig.parameters

    @functools.wraps(test)
    def run(adapter: Adapter, **fixtures: object) -> None:
        if not adapter.pools:
            assert_pools_refused(adapter.provisioner)
            return
        test(**({"adapter": adapter} if takes_adapter else {}), **fixtures)

    params = [p for p in sig.parameters.values() if p.name != "adapter"]
    adapter_param = inspect.Parameter("adapter", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    run.__signature__ = sig.replace(parameters=[adapter_param, *params])  # type: ignore[attr-defined]
    return run


# What a pool node given back by a cluster may be right after remove_workers/stop_cluster:
# still returning, or idle again already.
def given_back(cluster_id: str) -> set[tuple[str, str]]:
    return {("RETURNING", cluster_id), ("PENDING_IDLE", ""), ("IDLE", "")}


# Right after remove_idle a node is STOPPING, or gone already (absent: this default).
REMOVED = ("STOPPING", "")


# --------------------------------------------------------------------------------------------
# Idle nodes


@pool_test
def test_add_idle_starts_pending_idle_nodes_that_become_idle(prov: Provisioner, wait: Wait) -> None:
    pool = new_pool(prov)
    before = now_ms()
    added = prov.add_idle(pool, 2)
    ids = [n.node_id for n in added]
    assert len(set(ids)) == 2
    assert {n.status for n in added} == {"PENDING_IDLE"}
    assert {n.cluster_id for n in added} == {""}
    view = pool_view(prov, pool.pool_id)  # listed at once (warm already, if that quick)
    assert set(view) == set(ids)
    assert set(view.values()) <= {("PENDING_IDLE", ""), ("IDLE", "")}

    wait.equals(lambda: pool_view(prov, pool.pool_id), {n: ("IDLE", "") for n in ids})
    for n in prov.pool_nodes(pool.pool_id):
        assert before <= n.start_ms <= n.idle_since_ms <= now_ms()
    assert pool.pool_id in prov.pool_ids()


@pool_test
def test_add_idle_never_exceeds_max_capacity(prov: Provisioner, wait: Wait) -> None:
    pool = new_pool(prov, max_capacity=3)
    assert len(prov.add_idle(pool, 2)) == 2
    assert len(prov.add_idle(pool, 5)) == 1
    assert prov.add_idle(pool, 1) == []
    assert len(prov.pool_nodes(pool.pool_id)) == 3

    # Used nodes count too.
    ids = [n.node_id for n in prov.pool_nodes(pool.pool_id)]
    wait.equals(lambda: pool_view(prov, pool.pool_id), {n: ("IDLE", "") for n in ids})
    req = new_cluster(prov, pool=pool)
    prov.start_driver(req)  # a fresh node: the pool's nodes are the workers
    prov.add_workers(req, 2)
    assert prov.add_idle(pool, 1) == []

    # A node being removed does not: its place can be taken at once.
    (idle,) = [n for n, (status, _) in pool_view(prov, pool.pool_id).items() if status == "IDLE"]
    prov.remove_idle(pool.pool_id, [idle])
    assert pool_view(prov, pool.pool_id).get(idle, REMOVED) == REMOVED
    assert len(prov.add_idle(pool, 3)) == 1


@pool_test
def test_add_idle_from_two_threads_never_exceeds_max_capacity(
    adapter: Adapter, prov: Provisioner
) -> None:
    # Several rounds, many nodes per call: a check and start that are not one step would
    # interleave in some round. Each thread asks for n nodes, the pool has room for 1.5 n.
    n = adapter.concurrency_nodes
    capacity = n + n // 2
    for _ in range(adapter.concurrency_rounds):
        pool = new_pool(prov, max_capacity=capacity)
        barrier = threading.Barrier(2)

        def add(pool: PoolRequest = pool, barrier: threading.Barrier = barrier) -> int:
            barrier.wait(timeout=10)
            return len(prov.add_idle(pool, n))

        with ThreadPoolExecutor(2) as ex:
            futures = [ex.submit(add) for _ in range(2)]
            got = sorted(f.result(timeout=30) for f in futures)
        assert got == [capacity - n, n]
        assert len(prov.pool_nodes(pool.pool_id)) == capacity


# --------------------------------------------------------------------------------------------
# Taking nodes


@pool_test
def test_driver_takes_an_idle_node(prov: Provisioner, wait: Wait) -> None:
    pool, (idle,) = idle_pool(prov, wait, 1)
    req = new_cluster(prov, driver_pool=pool)

    driver = prov.start_driver(req)
    assert (driver.node_id, driver.role) == (idle, "driver")
    assert cluster_view(prov, req.cluster_id)[idle] in ("STARTING", "RUNNING")
    assert pool_view(prov, pool.pool_id)[idle] in (
        ("PENDING_USED", req.cluster_id),
        ("USED", req.cluster_id),
    )

    wait.equals(lambda: cluster_view(prov, req.cluster_id), {idle: "RUNNING"})
    wait.equals(lambda: pool_view(prov, pool.pool_id), {idle: ("USED", req.cluster_id)})
    assert [n.role for n in prov.observe(req.cluster_id)] == ["driver"]
    assert req.cluster_id in prov.cluster_ids()


@pool_test
def test_a_node_taken_idle_records_when_it_was_taken_and_when_it_ran(
    prov: Provisioner, wait: Wait
) -> None:
    """The pool's acquisition time (shared/domain/pool_scaling.py): a node taken idle has
    `taken_ms`, and `ready_ms` once it runs for the cluster; a node started for the cluster
    has neither, and a node given back forgets them."""
    pool, (idle,) = idle_pool(prov, wait, 1)
    req = new_cluster(prov, pool=pool)
    prov.start_driver(req)  # a fresh node
    before = now_ms()
    taken, fresh = prov.add_workers(req, 2)
    assert taken.node_id == idle
    wait.equals(
        lambda: worker_view(prov, req.cluster_id), {idle: "RUNNING", fresh.node_id: "RUNNING"}
    )
    wait.until(lambda: pool_view(prov, pool.pool_id)[idle], lambda v: v == ("USED", req.cluster_id))
    nodes = {n.node_id: n for n in prov.pool_nodes(pool.pool_id)}
    assert before - 1000 <= nodes[idle].taken_ms <= nodes[idle].ready_ms <= now_ms() + 1000
    assert (nodes[fresh.node_id].taken_ms, nodes[fresh.node_id].ready_ms) == (0, 0)

    prov.remove_workers(req.cluster_id, [idle])
    wait.until(lambda: pool_view(prov, pool.pool_id)[idle], lambda v: v == ("IDLE", ""))
    (back,) = [n for n in prov.pool_nodes(pool.pool_id) if n.node_id == idle]
    assert (back.taken_ms, back.ready_ms) == (0, 0)


@pool_test
def test_a_new_pool_node_is_pending_used_until_it_runs(prov: Provisioner, wait: Wait) -> None:
    pool = new_pool(prov)
    req = new_cluster(prov, pool=pool)
    prov.start_driver(req)  # a fresh node
    (worker,) = prov.add_workers(req, 1)
    assert worker.status == "STARTING"
    assert set(pool_view(prov, pool.pool_id)) == {worker.node_id}

    # Sampled until it runs. The pool is read first, so USED there means RUNNING by the time
    # the cluster is read, and STARTING in the cluster means PENDING_USED in the pool.
    seen: set[tuple[tuple[str, str], str]] = set()

    def sample() -> tuple[tuple[str, str], str]:
        in_pool = pool_view(prov, pool.pool_id)[worker.node_id]
        seen.add(got := (in_pool, worker_view(prov, req.cluster_id)[worker.node_id]))
        return got

    wait.until(sample, lambda got: got[1] == "RUNNING", "the worker runs")
    pending, used = ("PENDING_USED", req.cluster_id), ("USED", req.cluster_id)
    assert seen <= {(pending, "STARTING"), (pending, "RUNNING"), (used, "RUNNING")}
    assert pool_view(prov, pool.pool_id) == {worker.node_id: used}


@pool_test
def test_idle_nodes_are_taken_longest_idle_first_then_pending_ones(
    prov: Provisioner, wait: Wait
) -> None:
    pool, (first,) = idle_pool(prov, wait, 1)
    (second,) = [n.node_id for n in prov.add_idle(pool, 1)]
    wait.until(lambda: pool_view(prov, pool.pool_id)[second], lambda v: v == ("IDLE", ""))
    (pending,) = [n.node_id for n in prov.add_idle(pool, 1)]
    assert pool_view(prov, pool.pool_id)[pending] == ("PENDING_IDLE", "")

    req = new_cluster(prov, pool=pool)
    prov.start_driver(req)  # a fresh node
    taken = [prov.add_workers(req, 1)[0].node_id for _ in range(3)]
    assert taken == [first, second, pending]
    assert len(prov.pool_nodes(pool.pool_id)) == 3

    wait.equals(lambda: worker_view(prov, req.cluster_id), dict.fromkeys(taken, "RUNNING"))
    assert pool_view(prov, pool.pool_id) == {n: ("USED", req.cluster_id) for n in taken}


@pool_test
def test_workers_beyond_the_idle_nodes_are_new_pool_nodes(prov: Provisioner, wait: Wait) -> None:
    pool, idle = idle_pool(prov, wait, 2, max_capacity=4)
    req = new_cluster(prov, pool=pool)
    prov.start_driver(req)  # a fresh node

    workers = prov.add_workers(req, 3)
    ids = [w.node_id for w in workers]
    assert len(set(ids)) == 3
    assert set(idle) < set(ids)
    assert {w.role for w in workers} == {"worker"}
    assert set(pool_view(prov, pool.pool_id)) == set(ids)
    assert {c for _, c in pool_view(prov, pool.pool_id).values()} == {req.cluster_id}

    wait.equals(lambda: worker_view(prov, req.cluster_id), dict.fromkeys(ids, "RUNNING"))
    assert pool_view(prov, pool.pool_id) == {n: ("USED", req.cluster_id) for n in ids}
    # One more fits, two do not.
    with pytest.raises(PoolCapacityReached):
        prov.add_workers(req, 2)
    assert len(prov.add_workers(req, 1)) == 1
    assert len(prov.pool_nodes(pool.pool_id)) == 4


@pool_test
def test_capacity_reached_takes_nothing(prov: Provisioner, wait: Wait) -> None:
    pool, idle = idle_pool(prov, wait, 2, max_capacity=3)
    req = new_cluster(prov, pool=pool)
    driver = prov.start_driver(req)  # a fresh node

    with pytest.raises(PoolCapacityReached):
        prov.add_workers(req, 4)
    assert pool_view(prov, pool.pool_id) == {n: ("IDLE", "") for n in idle}
    assert set(cluster_view(prov, req.cluster_id)) == {driver.node_id}

    # Exactly the room left fits.
    assert set(idle) < {w.node_id for w in prov.add_workers(req, 3)}

    other = new_cluster(prov, driver_pool=pool)
    with pytest.raises(PoolCapacityReached):
        prov.start_driver(other)
    assert prov.observe(other.cluster_id) == []
    assert other.cluster_id not in prov.cluster_ids()
    assert {c for _, c in pool_view(prov, pool.pool_id).values()} == {req.cluster_id}


@pool_test
def test_a_full_pool_without_idle_nodes_refuses_a_driver(prov: Provisioner) -> None:
    pool = new_pool(prov, max_capacity=1)
    first = new_cluster(prov, driver_pool=pool)
    prov.start_driver(first)
    second = new_cluster(prov, driver_pool=pool)
    with pytest.raises(PoolCapacityReached):
        prov.start_driver(second)
    assert prov.observe(second.cluster_id) == []
    assert len(prov.pool_nodes(pool.pool_id)) == 1


# --------------------------------------------------------------------------------------------
# Giving nodes back


@pool_test
def test_removed_workers_return_to_the_pool(prov: Provisioner, wait: Wait) -> None:
    pool, idle = idle_pool(prov, wait, 2)
    old_idle_since = {n.node_id: n.idle_since_ms for n in prov.pool_nodes(pool.pool_id)}
    req = new_cluster(prov, pool=pool)
    prov.start_driver(req)  # a fresh node
    prov.add_workers(req, 2)
    wait.equals(lambda: worker_view(prov, req.cluster_id), dict.fromkeys(idle, "RUNNING"))
    gone, kept = idle

    before = now_ms()
    prov.remove_workers(req.cluster_id, [gone])
    view = worker_view(prov, req.cluster_id)
    assert view[kept] == "RUNNING"
    assert view.get(gone, "STOPPING") == "STOPPING"  # or gone already
    assert pool_view(prov, pool.pool_id)[gone] in given_back(req.cluster_id)

    wait.equals(lambda: worker_view(prov, req.cluster_id), {kept: "RUNNING"})
    wait.until(lambda: pool_view(prov, pool.pool_id)[gone], lambda v: v == ("IDLE", ""))
    assert pool_view(prov, pool.pool_id)[kept] == ("USED", req.cluster_id)
    (back,) = [n for n in prov.pool_nodes(pool.pool_id) if n.node_id == gone]
    assert back.idle_since_ms > old_idle_since[gone]
    assert before <= back.idle_since_ms <= now_ms()

    # The same node serves the next cluster.
    other = new_cluster(prov, pool=pool)
    prov.start_driver(other)
    assert [w.node_id for w in prov.add_workers(other, 1)] == [gone]
    wait.equals(lambda: worker_view(prov, other.cluster_id), {gone: "RUNNING"})


@pool_test
def test_stopped_cluster_returns_its_pool_nodes(prov: Provisioner, wait: Wait) -> None:
    pool, idle = idle_pool(prov, wait, 1)
    req = new_cluster(prov, pool=pool, driver_pool=pool)
    driver = prov.start_driver(req)
    workers = prov.add_workers(req, 2)  # one new pool node each (no idle node left)
    ids = [driver.node_id] + [w.node_id for w in workers]
    assert driver.node_id == idle[0]
    wait.equals(lambda: cluster_view(prov, req.cluster_id), dict.fromkeys(ids, "RUNNING"))

    before = now_ms()
    prov.stop_cluster(req.cluster_id)
    view = cluster_view(prov, req.cluster_id)
    assert set(view) <= set(ids)  # each one STOPPING, or gone already
    assert set(view.values()) <= {"STOPPING"}
    in_pool = pool_view(prov, pool.pool_id)
    assert set(in_pool) == set(ids)
    assert set(in_pool.values()) <= given_back(req.cluster_id)

    wait.equals(lambda: prov.observe(req.cluster_id), [])
    wait.equals(lambda: pool_view(prov, pool.pool_id), {n: ("IDLE", "") for n in ids})
    assert all(n.idle_since_ms >= before for n in prov.pool_nodes(pool.pool_id))
    assert req.cluster_id not in prov.cluster_ids()
    assert pool.pool_id in prov.pool_ids()


@pool_test
def test_stopped_cluster_with_a_fresh_driver_and_pool_workers(
    prov: Provisioner, wait: Wait
) -> None:
    pool = new_pool(prov)
    req = new_cluster(prov, pool=pool)
    driver = prov.start_driver(req)
    (worker,) = prov.add_workers(req, 1)
    assert set(pool_view(prov, pool.pool_id)) == {worker.node_id}
    wait.equals(
        lambda: cluster_view(prov, req.cluster_id),
        {driver.node_id: "RUNNING", worker.node_id: "RUNNING"},
    )

    prov.stop_cluster(req.cluster_id)
    wait.equals(lambda: prov.observe(req.cluster_id), [])
    # The driver is gone, the worker is back in the pool.
    wait.equals(lambda: pool_view(prov, pool.pool_id), {worker.node_id: ("IDLE", "")})


# --------------------------------------------------------------------------------------------
# Removing idle nodes


@pool_test
def test_remove_idle_leaves_taken_nodes_alone(prov: Provisioner, wait: Wait) -> None:
    pool, idle = idle_pool(prov, wait, 2)
    (pending,) = [n.node_id for n in prov.add_idle(pool, 1)]
    req = new_cluster(prov, pool=pool)
    prov.start_driver(req)  # a fresh node
    (taken,) = [w.node_id for w in prov.add_workers(req, 1)]
    (spare,) = set(idle) - {taken}

    prov.remove_idle(pool.pool_id, [*idle, pending])
    view = pool_view(prov, pool.pool_id)
    assert view.get(spare, REMOVED) == REMOVED
    assert view.get(pending, REMOVED) == REMOVED
    assert view[taken][1] == req.cluster_id
    assert view[taken][0] in ("PENDING_USED", "USED")

    wait.equals(lambda: pool_view(prov, pool.pool_id), {taken: ("USED", req.cluster_id)})
    assert worker_view(prov, req.cluster_id) == {taken: "RUNNING"}


@pool_test
def test_pool_ids_and_cluster_ids(prov: Provisioner, wait: Wait) -> None:
    pool, idle = idle_pool(prov, wait, 2)
    empty = new_pool(prov)
    assert pool.pool_id in prov.pool_ids()
    assert empty.pool_id not in prov.pool_ids()
    assert "" not in prov.cluster_ids()

    req = new_cluster(prov, pool=pool)
    prov.start_driver(req)  # a fresh node
    prov.add_workers(req, 1)
    assert req.cluster_id in prov.cluster_ids()
    assert "" not in prov.cluster_ids()

    prov.stop_cluster(req.cluster_id)
    wait.until(prov.cluster_ids, lambda ids: req.cluster_id not in ids, "cluster gone")
    wait.equals(lambda: pool_view(prov, pool.pool_id), {n: ("IDLE", "") for n in idle})

    prov.remove_idle(pool.pool_id, idle)
    wait.until(prov.pool_ids, lambda ids: pool.pool_id not in ids, "pool gone")
    assert prov.pool_nodes(pool.pool_id) == []


@pool_test
def test_a_lost_pool_node_is_lost_in_both_views(
    adapter: Adapter, prov: Provisioner, wait: Wait
) -> None:
    if adapter.lose_node is None:
        pytest.skip("the adapter cannot kill a node")
    pool, idle = idle_pool(prov, wait, 2)
    req = new_cluster(prov, pool=pool)
    driver = prov.start_driver(req)  # a fresh node
    (taken,) = [w.node_id for w in prov.add_workers(req, 1)]
    (spare,) = set(idle) - {taken}
    adapter.lose_node(taken)
    adapter.lose_node(spare)
    wait.equals(lambda: worker_view(prov, req.cluster_id), {taken: "LOST"})
    assert pool_view(prov, pool.pool_id) == {taken: ("LOST", req.cluster_id), spare: ("LOST", "")}
    assert cluster_view(prov, req.cluster_id)[driver.node_id] in ("STARTING", "RUNNING")


# --------------------------------------------------------------------------------------------
# Local storage


@pytest.mark.parametrize("pooled", [False, True], ids=["fresh", "pool"])
def test_grow_storage_grows_and_never_shrinks(
    adapter: Adapter, prov: Provisioner, wait: Wait, pooled: bool
) -> None:
    if pooled and not adapter.pools:
        assert_pools_refused(prov)
        return
    req = new_cluster(prov, pool=new_pool(prov) if pooled else None)
    prov.start_driver(req)
    driver_runs(prov, wait, req.cluster_id)
    prov.add_workers(req, 1)
    # The worker as observe reports it once it runs (its size is known by then).
    (worker,) = wait.until(
        lambda: [n for n in prov.observe(req.cluster_id) if n.role == "worker"],
        lambda ws: [w.status for w in ws] == ["RUNNING"],
        "the worker runs",
    )
    start = disk_bytes(prov, req.cluster_id, worker.node_id)
    bigger = start + 10 * 2**30

    prov.grow_storage(req.cluster_id, worker.node_id, bigger)
    wait.until(lambda: disk_bytes(prov, req.cluster_id, worker.node_id), lambda b: b == bigger)
    prov.grow_storage(req.cluster_id, worker.node_id, bigger)  # idempotent
    prov.grow_storage(req.cluster_id, worker.node_id, max(start - 2**30, 1))  # never shrinks
    assert disk_bytes(prov, req.cluster_id, worker.node_id) == bigger
    # The other node is untouched.
    (driver,) = [n for n in prov.observe(req.cluster_id) if n.role == "driver"]
    assert disk_bytes(prov, req.cluster_id, driver.node_id) == start


def test_nodes_report_their_disk_size(prov: Provisioner, wait: Wait) -> None:
    req = new_cluster(prov)
    prov.start_driver(req)
    # While it starts a node may not report its size yet; what it reports is a size.
    for node in prov.observe(req.cluster_id):
        assert int(node.attrs.get("disk_total_bytes", "1")) > 0
    (node,) = driver_runs(prov, wait, req.cluster_id)
    assert int(node.attrs["disk_total_bytes"]) > 0


# --------------------------------------------------------------------------------------------
# Without pools


def test_a_cluster_without_pool_runs_and_stops(prov: Provisioner, wait: Wait) -> None:
    """A cluster of fresh nodes, by the ids observe reports: workers added once the driver
    runs, one removed, then the whole cluster stopped."""
    pools_before = prov.pool_ids()
    req = new_cluster(prov)
    prov.start_driver(req)
    (driver,) = driver_runs(prov, wait, req.cluster_id)
    prov.add_workers(req, 2)
    nodes = wait.until(
        lambda: prov.observe(req.cluster_id),
        lambda ns: [n.status for n in ns] == ["RUNNING"] * 3,
        "driver and two workers run",
    )
    assert [n.role for n in nodes] == ["driver", "worker", "worker"]
    assert nodes[0].node_id == driver.node_id
    ids = [n.node_id for n in nodes]
    assert len(set(ids)) == 3
    assert req.cluster_id in prov.cluster_ids()
    assert prov.pool_ids() == pools_before

    prov.remove_workers(req.cluster_id, [ids[1]])
    assert cluster_view(prov, req.cluster_id).get(ids[1], "STOPPING") == "STOPPING"
    wait.equals(lambda: cluster_view(prov, req.cluster_id), {ids[0]: "RUNNING", ids[2]: "RUNNING"})

    # A worker removed as it starts (the autoscaler cancelling one that has not joined yet,
    # shared/domain/autoscale.py rule 6) goes without ever running; the others stay.
    (late,) = prov.add_workers(req, 1)
    prov.remove_workers(req.cluster_id, [late.node_id])
    seen: list[str] = []

    def late_status() -> dict[str, str]:
        view = cluster_view(prov, req.cluster_id)
        seen.append(view.get(late.node_id, "gone"))
        return view

    wait.equals(late_status, {ids[0]: "RUNNING", ids[2]: "RUNNING"})
    assert "RUNNING" not in seen, seen

    prov.stop_cluster(req.cluster_id)
    wait.equals(lambda: prov.observe(req.cluster_id), [])
    assert req.cluster_id not in prov.cluster_ids()
    assert prov.pool_ids() == pools_before


def test_nodes_without_pool_are_fresh_and_are_not_kept(prov: Provisioner, wait: Wait) -> None:
    pools_before = prov.pool_ids()
    req = new_cluster(prov)
    driver = prov.start_driver(req)
    workers = prov.add_workers(req, 2)
    assert (driver.role, {w.role for w in workers}) == ("driver", {"worker"})
    ids = [driver.node_id] + [w.node_id for w in workers]
    assert len(set(ids)) == 3
    view = cluster_view(prov, req.cluster_id)
    assert set(view) == set(ids)
    assert set(view.values()) <= {"STARTING", "RUNNING"}
    assert prov.pool_ids() == pools_before

    wait.equals(lambda: cluster_view(prov, req.cluster_id), dict.fromkeys(ids, "RUNNING"))
    assert prov.observe(req.cluster_id)[0].node_id == driver.node_id

    prov.remove_workers(req.cluster_id, [ids[1]])
    assert cluster_view(prov, req.cluster_id).get(ids[1], "STOPPING") == "STOPPING"
    wait.until(lambda: cluster_view(prov, req.cluster_id), lambda v: ids[1] not in v)

    prov.stop_cluster(req.cluster_id)
    wait.equals(lambda: prov.observe(req.cluster_id), [])
    assert req.cluster_id not in prov.cluster_ids()
    assert prov.pool_ids() == pools_before


# --------------------------------------------------------------------------------------------
# RecordProvisioner only: a file written before pools and storage existed keeps working.


def test_records_migrates_an_older_file(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE nodes (cluster_id TEXT, node_id TEXT PRIMARY KEY, role TEXT,"
        " start_ms INTEGER, ready_ms INTEGER, stop_ms INTEGER, lost INTEGER DEFAULT 0)"
    )
    t = now_ms()
    db.execute("INSERT INTO nodes VALUES ('c1', 'c1-d-1', 'driver', ?, ?, NULL, 0)", (t, t))
    db.commit()
    db.close()

    prov = RecordProvisioner(path, boot_s=0.05, stop_s=0.05)
    assert [(n.node_id, n.status, dict(n.attrs)) for n in prov.observe("c1")] == [
        ("c1-d-1", "RUNNING", {})
    ]
    assert prov.cluster_ids() == {"c1"}
    assert prov.pool_ids() == set()
    prov.grow_storage("c1", "c1-d-1", 2**30)
    assert prov.observe("c1")[0].attrs == {"disk_total_bytes": str(2**30)}
    # Opening it again (columns there now) changes nothing.
    again = RecordProvisioner(path)
    assert [n.node_id for n in again.observe("c1")] == ["c1-d-1"]
