"""Many clusters on Azure, simulated: ARM requests, Cosmos request units and Service Bus
operations of the control plane at scale, against ARM's request limits.

    .venv/bin/python -m bench.azure_scale --clusters 10000 --hours 1 --json bench/out/azure.json

The real services (cluster API service, lifecycle, reconciler sweep, heartbeats) and the ARM
provisioner with its real SDK clients run against the in-process ARM of tests/fake_arm.py with
ARM's throttling model (token buckets per subscription: reads 250 + 25/s, writes 200 + 10/s,
deletes 200 + 10/s; 429 with Retry-After), the SQLite store and the embedded bus, on simulated
time (one step per second; nothing sleeps). The settings are Azure's (infra/main.bicep): the
reconciler timer every 10 s, heartbeats every 10 s, drift reads every `--drift-check-s`.

`--subscriptions N` spreads the workspaces' managed resource groups over N subscriptions
(shared/adapters/arm/shards.py, placed by shared/domain/arm_placement.py), each its own
simulated ARM with its own limits; the reads are held against the limit of the busiest one.

Phases:
1. Fill: `--clusters` minus the burst are created and brought to RUNNING. This is setup, not
   measured: ARM's limits are lifted meanwhile (both the simulator's and the provisioner's
   budget), and every RUNNING cluster's driver agent then heartbeats. Throughout, a driver
   agent reports `ready` once its VM runs, and again as its executors register (`FakeAgents`).
2. Steady state for `--hours` of simulated time: every cluster RUNNING, the sweep every 10 s,
   every driver heartbeating. ARM reads/writes/deletes, 429s, store operations (as Cosmos RUs)
   and bus operations are counted, and reported per hour of simulated time.
3. Burst: `--burst` creates within one minute on top of the steady clusters, with ARM's limits
   on. Reported: the time until every one is RUNNING (or has a failure event), the ones lost
   or created twice (more than one cluster deployment PUT accepted), the 429s ARM answered.
4. Kill: one RUNNING cluster's driver VM fails in ARM and its agent goes silent; reported: the
   time until the control plane noticed (the cluster left RUNNING).

Cosmos RUs are estimated from the store operations, by size (Azure's published rule for point
reads; the others are this benchmark's assumptions, stated so they can be checked against a
real account's `x-ms-request-charge`): a point read 1 RU per started KB; a create or replace
5 RU per started KB (an indexed write of a 1 KB item costs about 5 RU); a delete 5 RU; a query
(list, scan page, events) 2.5 RU plus 1 RU per started KB returned. Service Bus operations:
each message sent is one operation, each handled message two more (receive, complete).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.report import emit
from shared.adapters.embedded_bus import EmbeddedBus
from shared.adapters.sqlite_store import SqliteStore
from shared.domain.arm_budget import ARM_LIMITS
from shared.domain.states import State
from shared.ports import OutMessage, Page, Record
from shared.services.auth import Principal
from shared.settings import Settings
from shared.wiring import Container
from tests.fake_arm import (
    SUB,
    ArmLimits,
    FakeAgents,
    FakeArm,
    FakeArms,
    arm_provisioner,
    sharded_provisioner,
)

QUEUE = "cluster-lifecycle"
SPEC = {"spark_version": "4.1.x-scala2.13", "node_type_id": "Standard_D4ds_v5", "num_workers": 1}
UNLIMITED = ArmLimits(reads=(1e12, 1e12), writes=(1e12, 1e12), deletes=(1e12, 1e12))


class SimClock:
    """Epoch milliseconds that move when the simulation moves them."""

    def __init__(self, ms: int = 1_800_000_000_000) -> None:
        self.ms = ms

    def now_ms(self) -> int:
        return self.ms

    def __call__(self) -> int:
        return self.ms

    def seconds(self) -> float:
        return self.ms / 1000


def _kb(body: Any) -> int:
    # orjson: the compact JSON Cosmos stores, sized in UTF-8 bytes (and ten times faster than
    # json.dumps, which was a tenth of the benchmark's time).
    return max(1, -(-len(orjson.dumps(body)) // 1024))


class MeteredStore:
    """The SQLite store, its operations counted and priced in Cosmos RUs (module docstring)."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.ops: Counter[str] = Counter()
        self.ru = 0.0

    def _charge(self, op: str, ru: float) -> None:
        self.ops[op] += 1
        self.ru += ru

    def get(self, kind: str, pk: str, id: str) -> Record | None:
        r = self.inner.get(kind, pk, id)
        self._charge("read", _kb(r.body) if r else 1)
        return r

    def create(self, kind: str, pk: str, id: str, body: Mapping[str, Any], **kw: Any) -> Record:
        self._charge("write", 5 * _kb(body))
        return self.inner.create(kind, pk, id, body, **kw)

    def replace(self, kind: str, pk: str, id: str, body: Mapping[str, Any], **kw: Any) -> Record:
        self._charge("write", 5 * _kb(body))
        return self.inner.replace(kind, pk, id, body, **kw)

    def delete(self, kind: str, pk: str, id: str, **kw: Any) -> None:
        self._charge("write", 5)
        self.inner.delete(kind, pk, id, **kw)

    def list(self, kind: str, pk: str, *, page_size: int, page_token: str | None) -> Page:
        page = self.inner.list(kind, pk, page_size=page_size, page_token=page_token)
        self._charge("query", 2.5 + sum(_kb(r.body) for r in page.items))
        return page

    def scan(self, kind: str, *, field: str, values: Sequence[str]) -> Iterator[Record]:
        ru = 2.5
        for r in self.inner.scan(kind, field=field, values=values):
            ru += _kb(r.body)
            yield r
        self._charge("query", ru)

    def append_events(
        self, cluster_id: str, events: Sequence[Mapping[str, Any]], **kw: Any
    ) -> None:
        self._charge("write", 5 * sum(_kb(e) for e in events))
        self.inner.append_events(cluster_id, events, **kw)

    def events(self, cluster_id: str, query: Any) -> tuple[list[dict[str, Any]], int]:
        out = self.inner.events(cluster_id, query)
        self._charge("query", 2.5 + sum(_kb(e) for e in out[0]))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class MeteredBus:
    """The embedded bus, its Service Bus operations counted."""

    def __init__(self, inner: EmbeddedBus) -> None:
        self.inner = inner
        self.ops = 0
        # Messages sent, by why (`kind`): what a burst's operations are made of.
        self.sent: Counter[str] = Counter()

    def send(self, queue: str, messages: Sequence[OutMessage]) -> None:
        self.ops += len(messages)
        self.sent.update(kind(m.message_id) for m in messages)
        self.inner.send(queue, messages)


def kind(message_id: str) -> str:
    """Why a lifecycle message was sent, from its id (services/lifecycle.py names them):
    `retry` a reconcile the ARM budget refused (due-time bucket `t<ms>`), `follow-up` the next
    reconcile of a cluster on its way, `kick`/`heal` the reconciler timer's, else the command's."""
    parts = message_id.split(":")
    if parts[0] == "r":
        return "retry" if parts[-1].startswith("t") else "follow-up"
    return parts[0] if parts[0] in ("kick", "heal") else "command"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Cloud:
    """The subscriptions' simulated ARMs, read together (one, or several behind FakeArms)."""

    def __init__(self, arms: list[FakeArm]) -> None:
        self.arms = arms

    def set_limits(self, limits: ArmLimits | None) -> None:
        for a in self.arms:
            a.set_limits(limits)

    def tick(self, n: int = 1) -> None:
        for a in self.arms:
            a.tick(n)

    def count(self, kind: str) -> int:
        return sum(a.counts[kind] for a in self.arms)

    @property
    def throttled(self) -> int:
        return sum(a.throttled for a in self.arms)

    @property
    def deployments_accepted(self) -> Counter[str]:
        return sum((a.deployments_accepted for a in self.arms), Counter())

    def find(self, type_suffix: str) -> list[dict[str, Any]]:
        return [r for a in self.arms for r in a.find(type_suffix)]

    def made(self, cid: str) -> bool:
        return any(
            "/virtualmachines/" in rid
            for a in self.arms
            for rid in a.resources.by_cluster.get(cid, {})
        )


class Sim:
    def __init__(
        self, root: Path, *, drift_check_s: float, workspaces: int, subscriptions: int = 1
    ) -> None:
        self.clock = SimClock()
        subs = [SUB] + [f"00000000-0000-0000-0000-{i:012d}" for i in range(2, subscriptions + 1)]
        arms = [
            FakeArm(limits=UNLIMITED, clock=self.clock.seconds, record=False, subscription=s)
            for s in subs
        ]
        self.subs = subs
        self.arm = Cloud(arms)
        self.store = MeteredStore(SqliteStore(root / "store.db", clock=self.clock))
        # Its worker slots and ready reports in the app's store, as in Azure.
        self.prov: Any = (
            arm_provisioner(arms[0], clock=self.clock.seconds, store=self.store)
            if subscriptions == 1
            else sharded_provisioner(FakeArms(arms), clock=self.clock.seconds, store=self.store)
        )
        # The driver agents' `ready` reports (a silent cluster's agent sends none).
        self.agents = [FakeAgents(a) for a in arms]
        self.bus = MeteredBus(EmbeddedBus(root / "bus.db", clock=self.clock))
        self.settings = Settings(
            data_dir=root / "data",
            agent_callback_url="https://sp.example",
            reconcile_interval_s=10.0,
            heartbeat_s=10.0,
            drift_check_s=drift_check_s,
            quota_defaults=json.dumps({"max_clusters": 10**9, "max_total_workers": 10**9}),
        )
        self.c = Container(
            settings=self.settings,
            store=self.store,  # type: ignore[arg-type]
            bus=self.bus,  # type: ignore[arg-type]
            provisioner=self.prov,
            clock=self.clock,
        )
        self.workspaces = [f"ws{i}" for i in range(workspaces)]
        for ws in self.workspaces:
            self.c.admin.create_workspace({"name": ws, "workspace_id": ws, "region": "westeurope"})
        self.arm.tick(2)
        self.clusters: list[tuple[str, str]] = []
        self.silent: set[str] = set()
        self.running_ids: set[str] = set()
        self.handled = 0

    # ---- limits
    def limits(self, on: bool) -> None:
        """ARM's documented limits (on) or none (setup); the provisioner's budget starts full."""
        self.arm.set_limits(ArmLimits() if on else UNLIMITED)
        now = self.clock.seconds()
        self.prov.throttle.budgets.clear()
        if not on:
            from shared.domain.arm_budget import Budget

            for sub in self.subs:
                self.prov.throttle.budgets[sub] = Budget.new(
                    now, {k: (1e12, 1e12) for k in ("reads", "writes", "deletes")}
                )

    # ---- the world moving
    def create(self, i: int) -> str:
        ws = self.workspaces[i % len(self.workspaces)]
        p = Principal(ws, "bench", "t")
        cid = self.c.clusters.create(p, {**SPEC, "cluster_name": f"c{i}"})
        self.clusters.append((ws, cid))
        return cid

    def step(self, seconds: int = 1, *, setup: bool = False) -> None:
        """Time passes: due messages are handled; every 10 s the reconciler timer sweeps;
        every 20 s ARM's operations move one step (a deployment takes two); agents beat.
        `setup`: only messages and ARM (every 2 s), no timer, no agents (the fill phase)."""
        for _ in range(seconds):
            self.clock.ms += 1000
            t = self.clock.ms // 1000
            while (d := self.bus.inner.receive(QUEUE)) is not None:
                self.c.lifecycle.handle(d.body)
                self.bus.inner.complete(d)
                self.bus.ops += 2
                self.handled += 1
            if setup:
                if t % 2 == 0:
                    self.arm.tick()
                    self.report_ready()
                continue
            if t % 10 == 0:
                self.c.lifecycle.sweep()
            if t % 20 == 0:
                self.arm.tick()
                self.report_ready()
            self.beat(t)

    def report_ready(self) -> None:
        """The driver agents' `ready` reports that changed, in every subscription."""
        for agents in self.agents:
            agents.heartbeat(self.c.utilization)

    def beat(self, t: int) -> None:
        """Every driver agent posts a sample every 10 s (spread by cluster), from the moment its
        VM exists in ARM (the agent starts at boot, before its cluster is RUNNING)."""
        for i in range(t % 10, len(self.clusters), 10):
            ws, cid = self.clusters[i]
            if cid in self.silent or not self.booted(cid):
                continue
            agent = Principal(ws, "agent", "a", role="agent", scope=cid)
            self.c.utilization.heartbeat(agent, {"cluster_id": cid, "sample": {"total_slots": 4}})

    def booted(self, cid: str) -> bool:
        if cid in self.running_ids:
            return True
        return self.arm.made(cid)

    def refresh_running(self) -> int:
        self.running_ids = {
            r.id for r in self.store.inner.scan("cluster", field="state", values=["RUNNING"])
        }
        return len(self.running_ids)

    def states(self, ids: set[str]) -> Counter[str]:
        out: Counter[str] = Counter()
        for r in self.store.inner.scan("cluster", field="state", values=[s.value for s in State]):
            if r.id in ids:
                out[r.body["state"]] += 1
        return out

    def snapshot(self) -> dict[str, float]:
        return {
            "reads": self.arm.count("reads"),
            "writes": self.arm.count("writes"),
            "deletes": self.arm.count("deletes"),
            "throttled": self.arm.throttled,
            "graph": self.arm.count("graph"),
            "ru": self.store.ru,
            "bus": self.bus.ops,
            **{f"sent_{k}": v for k, v in self.bus.sent.items()},
            "t": self.clock.seconds(),
        }


class Phases:
    """Wall time and peak memory of each phase (the simulated figures do not depend on them;
    progress goes to stderr, so a long run shows where it is)."""

    def __init__(self) -> None:
        self.t0 = self.last = time.monotonic()
        self.walls: dict[str, float] = {}

    def done(self, name: str, **info: Any) -> None:
        now = time.monotonic()
        self.walls[name] = round(now - self.last, 1)
        self.last = now
        print(
            f"azure_scale: {name} done in {self.walls[name]} s wall, peak RSS {rss_mb()} MB",
            info or "",
            file=sys.stderr,
            flush=True,
        )

    def table(self) -> dict[str, float]:
        return {f"wall_{k}_s": v for k, v in self.walls.items()} | {"max_rss_mb": rss_mb()}


def rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux


def run(
    n: int,
    hours: float,
    burst: int,
    drift_check_s: float,
    workspaces: int,
    subscriptions: int = 1,
) -> dict[str, Any]:
    wall = time.monotonic()
    phases = Phases()
    burst = min(burst, n)
    with tempfile.TemporaryDirectory(prefix="azure-scale-") as tmp:
        sim = Sim(
            Path(tmp),
            drift_check_s=drift_check_s,
            workspaces=workspaces,
            subscriptions=subscriptions,
        )
        # 1. fill (setup, no limits)
        sim.limits(on=False)
        for i in range(n - burst):
            sim.create(i)
            if i % 200 == 199:
                sim.step(1, setup=True)
        for _ in range(3600):
            sim.step(5, setup=True)
            if sim.refresh_running() == n - burst:
                break
        for _ in range(60):  # and the reconciles still scheduled for them have run
            counts = sim.bus.inner.counts(QUEUE)
            if counts["active"] + counts["scheduled"] + counts["locked"] == 0:
                break
            sim.step(5, setup=True)
        filled = sim.refresh_running()
        phases.done("fill", running=filled)
        # 2. steady state
        sim.limits(on=True)
        sim.step(60)  # the first minute: buckets settle, every agent has beaten
        a = sim.snapshot()
        sub_a = [arm.counts["reads"] for arm in sim.arm.arms]
        steady_s = int(hours * 3600)
        for _ in range(0, steady_s, 60):
            sim.step(60)
            sim.refresh_running()
        b = sim.snapshot()
        sub_b = [arm.counts["reads"] for arm in sim.arm.arms]
        phases.done("steady", reads=b["reads"] - a["reads"])
        per_h = 3600 / max(1.0, b["t"] - a["t"])
        # 3. burst
        start = sim.clock.seconds()
        ids: set[str] = set()
        for i in range(burst):
            ids.add(sim.create(n - burst + i))
            if i % max(1, burst // 60) == 0:
                sim.step(1)  # the burst arrives within one minute
        done_s = None
        for _ in range(4 * 3600 // 30):
            sim.step(30)
            sim.refresh_running()
            st = sim.states(ids)
            if st.get("RUNNING", 0) + st.get("TERMINATED", 0) + st.get("ERROR", 0) >= len(ids):
                done_s = sim.clock.seconds() - start
                break
        st = sim.states(ids)
        puts = sim.arm.deployments_accepted
        c_ = sim.snapshot()
        phases.done("burst", simulated_s=done_s)
        # 4. kill one driver
        victim = next(iter(sim.running_ids))
        vm = next(
            r for r in sim.arm.find("virtualMachines") if r["tags"].get("ClusterId") == victim
        )
        vm["properties"]["provisioningState"] = "Failed"
        sim.silent.add(victim)
        for agents in sim.agents:
            agents.silent.add(victim)
        killed = sim.clock.seconds()
        noticed = None
        ws = next(w for w, cid in sim.clusters if cid == victim)
        for _ in range(600):
            sim.step(1)
            got = sim.c.repo.load(ws, victim)
            if got is None or got[0].state != State.RUNNING:
                noticed = sim.clock.seconds() - killed
                break
        phases.done("kill", noticed_s=noticed)
    # ARM's limits are per subscription: the busiest one is held against them.
    reads_h = max(y - x for x, y in zip(sub_a, sub_b, strict=True)) * per_h
    limit_reads_h = ARM_LIMITS["reads"][1] * 3600
    return {
        "clusters": n,
        "subscriptions": subscriptions,
        "running_at_steady_state": filled,
        "steady_simulated_h": round((b["t"] - a["t"]) / 3600, 3),
        "arm_reads_per_h": round((b["reads"] - a["reads"]) * per_h),
        "arm_reads_per_h_busiest_subscription": round(reads_h),
        "arm_reads_limit_per_h": round(limit_reads_h),
        "arm_reads_pct_of_refill": round(100 * reads_h / limit_reads_h, 1),
        "arm_writes_per_h": round((b["writes"] - a["writes"]) * per_h),
        "arm_writes_limit_per_h": round(ARM_LIMITS["writes"][1] * 3600),
        "arm_deletes_per_h": round((b["deletes"] - a["deletes"]) * per_h),
        "arm_deletes_limit_per_h": round(ARM_LIMITS["deletes"][1] * 3600),
        "arm_429_steady": int(b["throttled"] - a["throttled"]),
        "cosmos_ru_per_h": round((b["ru"] - a["ru"]) * per_h),
        "resource_graph_queries_per_h": round((b["graph"] - a["graph"]) * per_h),
        "cosmos_ru_per_s_per_1000_clusters": round(
            (b["ru"] - a["ru"]) * per_h / 3600 / max(1, filled) * 1000, 1
        ),
        "servicebus_ops_per_h": round((b["bus"] - a["bus"]) * per_h),
        "servicebus_ops_per_h_per_1000_clusters": round(
            (b["bus"] - a["bus"]) * per_h / max(1, filled) * 1000
        ),
        "burst_cosmos_ru": round(c_["ru"] - b["ru"]),
        "burst_servicebus_ops": int(c_["bus"] - b["bus"]),
        "burst_messages_sent_by_kind": {
            k[5:]: int(c_[k] - b.get(k, 0)) for k in sorted(c_) if k.startswith("sent_")
        },
        "burst_arm_reads": int(c_["reads"] - b["reads"]),
        "burst_arm_writes": int(c_["writes"] - b["writes"]),
        "burst_creates": burst,
        "burst_to_running_s": None if done_s is None else round(done_s),
        "burst_running": st.get("RUNNING", 0),
        "burst_failed": st.get("TERMINATED", 0) + st.get("ERROR", 0),
        "burst_lost": burst - sum(st.values()),
        "burst_created_twice": sum(
            1 for cid in ids if puts.get(f"sparkplane-cluster-{cid}", 0) > 1
        ),
        "burst_arm_429": int(c_["throttled"] - b["throttled"]),
        "kill_noticed_s": None if noticed is None else round(noticed),
        "wall_s": round(time.monotonic() - wall, 1),
        **phases.table(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", type=int, default=10000)
    ap.add_argument("--hours", type=float, default=1.0, help="simulated steady state")
    ap.add_argument("--burst", type=int, default=1000)
    ap.add_argument("--drift-check-s", type=float, default=7200.0)
    ap.add_argument("--workspaces", type=int, default=20)
    ap.add_argument(
        "--subscriptions",
        type=int,
        default=1,
        help="subscriptions of managed resource groups, each with ARM's limits",
    )
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    result = run(a.clusters, a.hours, a.burst, a.drift_check_s, a.workspaces, a.subscriptions)
    emit(
        f"azure_scale: {a.clusters} clusters, {a.subscriptions} subscription(s), simulated",
        result,
        a.json,
    )


if __name__ == "__main__":
    main()
