"""One autoscaling timer tick over many running clusters, on the embedded store.

    .venv/bin/python -m bench.autoscale_tick --clusters 10000 --json bench/out/autoscale_tick.json

Writes N RUNNING autoscale(1..8) clusters, each with `--samples` heartbeat samples (default:
the number the autoscaler reads, `autoscale_samples`, one per `heartbeat_s`), into a fresh
SQLite store, then times `Utilization.autoscale_tick()` (the timer function's work: scan, read
samples, run the policy, write the clusters that change). Target: at most 1 s for 10,000
clusters.

The ticks follow each other as in the product, on a simulated clock: between two ticks (not
timed) time moves on by one timer period (`heartbeat_s`, as the autoscaling timer's
`*/10 * * * * *`), every cluster's agent reports one new sample, and the clusters the previous
tick resized finish resizing (RUNNING again, as the reconcile leaves them), so every tick
evaluates all N clusters.

`--forecast-share F` opts that share of the clusters into the forecast hold
(spark.sparkplane.autoscaling.forecast on) and gives each a stored forecast state of 5 days of
history, its open bin in its own phase (as a cluster that has been running has it): the tick
then also reads those states (the first tick) and folds samples, forecasts and writes the
states whose bin closed (the later ones).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bench.report import emit
from shared.adapters.records import RecordProvisioner
from shared.adapters.sqlite_store import SqliteStore
from shared.domain import autoscale_settings as conf
from shared.domain import cluster as dom
from shared.domain import forecast as fc
from shared.domain.states import State
from shared.ports import OutMessage
from shared.services.clusters import Catalog, ClusterService
from shared.services.documents import ClusterRepo
from shared.services.prewarm import KIND as FKIND
from shared.services.utilization import SAMPLE, Utilization
from shared.settings import Settings


class NullBus:
    def __init__(self) -> None:
        self.sent = 0

    def send(self, queue: str, messages: Sequence[OutMessage]) -> None:
        self.sent += len(messages)


class Clock:
    """Simulated time: `advance` moves it on between ticks."""

    def __init__(self, now_ms: int) -> None:
        self.ms = now_ms

    def now_ms(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


def _history(now: int) -> fc.ForecastState:
    """Five days of an office-hours-like demand (0-8 workers), one sample a minute."""
    s = fc.new_state("template")
    t = now - 5 * fc.DAY_MS
    while t < now - 60_000:
        hour = (t // 3_600_000) % 24
        s = fc.observe(s, t, 8 if 9 <= hour < 18 else 0)
        t += 60_000
    return s


def _sample(ts: int, busy: bool, i: int, rng: random.Random) -> dict[str, object]:
    return {
        "ts_ms": ts,
        "running_tasks": 2 if busy else 0,
        "pending_tasks": rng.randint(0, 30) if busy else 0,
        "active_jobs": 1 if busy else 0,
        "total_slots": 2,
        "workers": [{"node_id": f"n{i}", "running_tasks": 2 if busy else 0}],
    }


def _put_sample(store: SqliteStore, cluster_id: str, sample: dict[str, object]) -> None:
    ts = int(sample["ts_ms"])  # type: ignore[call-overload]
    store.create(SAMPLE, cluster_id, f"{10**13 - ts:013d}-0000", sample, ttl_s=3600)


def populate(
    store: SqliteStore,
    n: int,
    busy_share: float,
    rng: random.Random,
    forecast_share: float = 0.0,
    *,
    now: int,
    samples: int,
    every_s: float,
) -> list[bool]:
    """The clusters and their history; which of them are busy."""
    body = {
        "spark_version": "4.1.x-scala2.13",
        "node_type_id": "rec-small",
        "autoscale": {"min_workers": 1, "max_workers": 8},
    }
    spec = dom.parse_spec(body)
    fspec = dom.parse_spec({**body, "spark_conf": {conf.FORECAST: "on"}})
    template = _history(now) if forecast_share > 0 else None
    p = fc.ForecastParams()
    busies: list[bool] = []
    for i in range(n):
        forecasting = template is not None and rng.random() < forecast_share
        if forecasting:
            assert template is not None
            phase = fc.new_state(f"c{i:06d}").phase_ms
            cur = (now - 20_000 - p.week_start_ms - phase) // (p.bin_s * 1000)
            state = replace(template, phase_ms=phase, cur_bin=cur)
            store.create(FKIND, f"c{i:06d}", f"c{i:06d}", fc.to_doc(state))
        c = dom.create(
            cluster_id=f"c{i:06d}",
            workspace_id="w",
            spec=fspec if forecasting else spec,
            user="u",
            now=now - 3_600_000,
        )
        c.state = State.RUNNING
        c.running_since = now - 3_600_000
        c.pending_events = []
        store.create("cluster", "w", c.cluster_id, c.doc())
        busy = rng.random() < busy_share
        busies.append(busy)
        for k in range(samples):
            ts = now - (samples - k) * int(every_s * 1000)
            _put_sample(store, c.cluster_id, _sample(ts, busy, i, rng))
    return busies


def between_ticks(
    store: SqliteStore, clock: Clock, busies: list[bool], every_s: float, rng: random.Random
) -> None:
    """One timer period passes: each agent reports a sample; resizes finish."""
    clock.advance(every_s)
    for i, busy in enumerate(busies):
        _put_sample(store, f"c{i:06d}", _sample(clock.ms - 1000, busy, i, rng))
    for r in list(store.scan("cluster", field="state", values=[State.RESIZING.value])):
        body = dict(r.body, state=State.RUNNING.value)
        store.replace("cluster", r.pk, r.id, body, etag=r.etag)


def run(
    n: int,
    busy_share: float,
    ticks: int,
    forecast_share: float = 0.0,
    samples: int | None = None,
) -> dict[str, float | int | None]:
    tmp = Path(tempfile.mkdtemp(prefix="sp-tick-"))
    store = SqliteStore(tmp / "store.db")
    settings = Settings(data_dir=tmp)
    every_s = settings.heartbeat_s
    samples = settings.autoscale_samples if samples is None else samples
    prov = RecordProvisioner(tmp / "records.db")
    bus = NullBus()
    clock = Clock(int(time.time() * 1000))
    clusters = ClusterService(store, bus, Catalog(prov), clock, settings)
    util = Utilization(store, ClusterRepo(store, settings), clusters, clock, settings)
    rng = random.Random(7)
    busies = populate(
        store, n, busy_share, rng, forecast_share, now=clock.ms, samples=samples, every_s=every_s
    )
    times = []
    cpu = []
    changed = []
    looked = []
    for k in range(ticks):
        if k:
            between_ticks(store, clock, busies, every_s, rng)
        t, c = time.perf_counter(), time.process_time()
        stats = util.autoscale_tick()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        changed.append(stats["changed"])
        looked.append(stats["clusters"])
    store.close()
    return {
        "clusters": n,
        "samples_per_cluster": samples,
        "busy_share": busy_share,
        "forecast_share": forecast_share,
        # Clusters evaluated per tick (every one of them on every tick).
        "evaluated_min": min(looked),
        "tick_s_first": round(times[0], 3),
        "tick_s_median": round(statistics.median(times), 3),
        "tick_cpu_s_first": round(cpu[0], 3),
        "tick_cpu_s_median": round(statistics.median(cpu), 3),
        # After every forecast state has been read (at most 1,000 a tick after a start).
        "tick_s_last3_median": round(statistics.median(times[-3:]), 3),
        "tick_cpu_s_last3_median": round(statistics.median(cpu[-3:]), 3),
        "changed_first_tick": changed[0],
        "changed_later_median": statistics.median(changed[1:]) if ticks > 1 else None,
        "reconciles_sent": bus.sent,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clusters", type=int, default=10_000)
    ap.add_argument("--busy-share", type=float, default=0.2)
    ap.add_argument("--ticks", type=int, default=3)
    ap.add_argument("--forecast-share", type=float, default=0.0)
    ap.add_argument(
        "--samples",
        type=int,
        default=None,
        help="stored samples per cluster (default: the autoscaler's autoscale_samples)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = run(args.clusters, args.busy_share, args.ticks, args.forecast_share, args.samples)
    emit(f"autoscale tick over {args.clusters} clusters (SQLite store)", result, args.json)


if __name__ == "__main__":
    main()
