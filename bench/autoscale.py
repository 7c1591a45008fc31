"""Autoscaling benchmark: sparkplane's production policy against documented peer policies.

    .venv/bin/python -m bench.autoscale                # every built-in trace, boot 60 s and 180 s
    .venv/bin/python -m bench.autoscale --quick        # one seed, boot 60 s, 6 h of SWIM
    .venv/bin/python -m bench.autoscale --trace FILE.csv --json OUT.json
    .venv/bin/python -m bench.autoscale --plot OUT.png --plot-trace bursty-s0
    .venv/bin/python -m bench.autoscale --frontier     # adds the knob's settings, sparkplane-<s>
    .venv/bin/python -m bench.autoscale --generated 30 --seeds 0,1,2   # generated shapes
    .venv/bin/python -m bench.autoscale --scenarios --seeds 0,1        # scenario shapes
    .venv/bin/python -m bench.autoscale --week --warmup-s 259200       # 7-day traces, 3 scored
    .venv/bin/python -m bench.autoscale --scale-check  # decide_size over 10,000 clusters

The simulator (bench/sim/engine.py) runs `shared.domain.autoscale` unchanged for the
"sparkplane" rows (bench/sim/policies.py: Sparkplane); the baselines are re-implemented from
their documentation, each with its source in its docstring. The traces (bench/sim/traces.py):
the SWIM Facebook 2009 day (../shared/traces/swim-fb2009-day0.tsv, converted by the rule stated
there) and synthetic shapes, several seeds each; or any CSV `submit_s,tasks,task_s[,shuffle_mb]`.

Metrics per (trace, boot delay, policy): worker node-hours (booting included, per-second
billing), idle node-hours (workers running no task), job slowdown p50/p95 (completion time over
the completion time with unlimited capacity), scaling actions, reversals (a scale-up followed by
a scale-down, or the reverse, within 10 minutes), false terminations (sparkplane's idle policy
terminating a cluster with running or pending work or an active job/query).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench import autoscale_sweep as sweep
from bench.sim.engine import Result, Sim
from bench.sim.generated import generated_traces
from bench.sim.model import ClusterSpec, Trace
from bench.sim.policies import BASELINES, FRONTIER, PREDICTIVE, STATIC, make_policy
from bench.sim.scenarios import CSV_CLUSTER, scenario_traces
from bench.sim.traces import (
    SHAPES,
    SWIM_FILE,
    WEEK_SHAPES,
    builtin_traces,
    demand_curve,
    load_csv,
    swim_rows,
    swim_trace,
    week_traces,
    write_csv,
)
from shared.domain.autoscale import (
    AutoscaleParams,
    Sample,
    WorkerLoad,
    decide_size,
    idle_decision,
    last_activity,
)
from shared.domain.autoscale_settings import PREFERENCES

SHARED_TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
OURS = "sparkplane"
POLICIES = (OURS, "sparkplane-noterm", *BASELINES, *STATIC)
DEFAULT_BOOTS = (60.0, 180.0)


# ------------------------------------------------------------------------------------------
# Running


def _run_one(args: tuple[Trace, str, float, float | None, float, dict]) -> Result:
    trace, policy, boot_s, record, warmup_s, kw = args
    sim = Sim(trace, make_policy(policy), boot_s, record_period_s=record, warmup_s=warmup_s, **kw)
    return sim.run()


def run_all(
    traces: Sequence[Trace],
    boots: Sequence[float],
    policies: Sequence[str] = POLICIES,
    *,
    workers: int = 1,
    progress: bool = True,
    warmup_s: float = 0.0,
    sim_kw: dict | None = None,
) -> list[Result]:
    kw = sim_kw or {}
    tasks = [(t, p, b, None, warmup_s, kw) for b in boots for t in traces for p in policies]
    if workers > 1:
        from multiprocessing import get_context

        with get_context("fork").Pool(workers) as pool:
            return list(pool.imap(_run_one, tasks, chunksize=1))
    out = []
    for i, task in enumerate(tasks):
        out.append(_run_one(task))
        if progress and sys.stderr.isatty():
            print(f"\r{i + 1}/{len(tasks)} runs", end="", file=sys.stderr, flush=True)
    if progress and sys.stderr.isatty():
        print(file=sys.stderr)
    return out


# ------------------------------------------------------------------------------------------
# The goal (issue 4): per trace and boot delay, sparkplane is Pareto-better than every
# autoscaling baseline on (node-hours, p95 slowdown), uses >= 40% fewer node-hours than
# static-max with p95 <= 1.25x static-max's, and never terminates a busy cluster.

EPS = 1e-9


def beats(ours: dict, other: dict) -> bool:
    """Fewer node-hours at equal or lower p95, or lower p95 at equal or fewer node-hours."""
    nh, p95 = ours["node_hours"], ours["slowdown_p95"]
    onh, op95 = other["node_hours"], other["slowdown_p95"]
    return (nh < onh - EPS and p95 <= op95 + EPS) or (p95 < op95 - EPS and nh <= onh + EPS)


def goal_check(rows: Iterable[dict]) -> list[dict]:
    """One verdict per (trace, boot_s) from the result rows."""
    groups: dict[tuple[str, float], dict[str, dict]] = defaultdict(dict)
    for r in rows:
        groups[(r["trace"], r["boot_s"])][r["policy"]] = r
    out = []
    for (trace, boot), by in groups.items():
        ours = by.get(OURS)
        if ours is None:
            continue
        v: dict = {"trace": trace, "boot_s": boot, "lost_to": []}
        for b in BASELINES:
            if b in by and not beats(ours, by[b]):
                v["lost_to"].append(b)
        smax = by.get("static-max")
        if smax:
            v["vs_static_max_node_hours"] = ours["node_hours"] / smax["node_hours"] - 1
            v["vs_static_max_p95"] = ours["slowdown_p95"] / smax["slowdown_p95"]
            v["static_max_ok"] = (
                ours["node_hours"] <= 0.6 * smax["node_hours"] + EPS
                and ours["slowdown_p95"] <= 1.25 * smax["slowdown_p95"] + EPS
            )
        v["false_terminations"] = ours["false_terminations"]
        v["met"] = (
            not v["lost_to"] and v.get("static_max_ok", True) and ours["false_terminations"] == 0
        )
        out.append(v)
    return out


# ------------------------------------------------------------------------------------------
# Output


def print_tables(rows: list[dict], verdicts: list[dict], *, full: bool = True) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    if full:
        t = Table(title="Autoscaling simulator: every run", show_lines=False)
        for col in (
            "trace",
            "boot s",
            "policy",
            "node-h",
            "vs max",
            "idle node-h",
            "p50",
            "p95",
            "actions",
            "reversals",
            "false term",
            "recompute h",
        ):
            t.add_column(col, justify="left" if col in ("trace", "policy") else "right")
        smax = {
            (r["trace"], r["boot_s"]): r["node_hours"] for r in rows if r["policy"] == "static-max"
        }
        last = None
        for r in rows:
            key = (r["trace"], r["boot_s"])
            if last is not None and key != last:
                t.add_section()
            last = key
            ref = smax.get(key)
            rel = f"{r['node_hours'] / ref - 1:+.0%}" if ref else ""
            name = f"[bold]{r['policy']}[/bold]" if r["policy"] == OURS else r["policy"]
            t.add_row(
                r["trace"],
                f"{r['boot_s']:.0f}",
                name,
                f"{r['node_hours']:.1f}",
                rel,
                f"{r['idle_node_hours']:.1f}",
                f"{r['slowdown_p50']:.2f}",
                f"{r['slowdown_p95']:.2f}",
                str(r["scaling_actions"]),
                str(r["reversals"]),
                str(r["false_terminations"]),
                f"{r['recomputed_task_hours']:.2f}",
            )
        console.print(t)
    s = Table(title="Goal per trace: sparkplane vs every autoscaling baseline and static-max")
    for col in (
        "trace",
        "boot s",
        "met",
        "not Pareto-better than",
        "node-h vs max",
        "p95 / max's",
        "false term",
    ):
        s.add_column(col)
    for v in verdicts:
        s.add_row(
            v["trace"],
            f"{v['boot_s']:.0f}",
            "yes" if v["met"] else "NO",
            ", ".join(v["lost_to"]) or "-",
            f"{v.get('vs_static_max_node_hours', float('nan')):+.0%}",
            f"{v.get('vs_static_max_p95', float('nan')):.2f}x",
            str(v["false_terminations"]),
        )
    console.print(s)
    met = sum(v["met"] for v in verdicts)
    console.print(f"goal met on {met} of {len(verdicts)} (trace, boot) pairs")
    shape_summary(rows, console)


def shape_summary(rows: list[dict], console) -> None:
    """Mean over seeds per (shape, boot, policy)."""
    from rich.table import Table

    acc: dict[tuple[str, float, str], list[dict]] = defaultdict(list)
    for r in rows:
        acc[(r.get("shape", r["trace"]), r["boot_s"], r["policy"])].append(r)
    t = Table(title="Mean over seeds per shape")
    for col in (
        "shape",
        "boot s",
        "policy",
        "node-h",
        "p50",
        "p95",
        "actions",
        "reversals",
        "false term",
    ):
        t.add_column(col)
    last = None
    for (shape, boot, pol), rs in acc.items():
        if last is not None and (shape, boot) != last:
            t.add_section()
        last = (shape, boot)
        n = len(rs)
        t.add_row(
            shape,
            f"{boot:.0f}",
            pol,
            f"{sum(r['node_hours'] for r in rs) / n:.1f}",
            f"{sum(r['slowdown_p50'] for r in rs) / n:.2f}",
            f"{sum(r['slowdown_p95'] for r in rs) / n:.2f}",
            f"{sum(r['scaling_actions'] for r in rs) / n:.0f}",
            f"{sum(r['reversals'] for r in rs) / n:.1f}",
            str(sum(r["false_terminations"] for r in rs)),
        )
    console.print(t)


SHORT = {
    "databricks-standard": "db-standard",
    "databricks-optimized": "db-optimized",
    "dataproc": "dataproc",
    "spark-dynamic-allocation": "spark-DA",
    "k8s-cluster-autoscaler": "k8s-CA",
}


def markdown(rows: list[dict]) -> str:
    """The results as markdown: per (trace, boot) node-hours / p95 slowdown of every policy,
    with a mark on each baseline: + sparkplane is Pareto-better, = identical, - not."""
    groups: dict[tuple[str, float], dict[str, dict]] = defaultdict(dict)
    for r in rows:
        groups[(r["trace"], r["boot_s"])][r["policy"]] = r
    cols = [OURS, *BASELINES, "static-max", "static-min"]
    out = [
        "| trace | boot s | " + " | ".join(SHORT.get(c, c) for c in cols) + " | goal |",
        "|---" * (len(cols) + 3) + "|",
    ]
    verdicts = {(v["trace"], v["boot_s"]): v for v in goal_check(rows)}
    for (trace, boot), by in groups.items():
        ours = by.get(OURS)
        cells = []
        for c in cols:
            r = by.get(c)
            if r is None:
                cells.append("")
                continue
            cell = f"{r['node_hours']:.1f} / {r['slowdown_p95']:.2f}"
            if ours is not None and c in BASELINES:
                same = (
                    abs(r["node_hours"] - ours["node_hours"]) <= EPS
                    and abs(r["slowdown_p95"] - ours["slowdown_p95"]) <= EPS
                )
                cell += " =" if same else (" +" if beats(ours, r) else " -")
            cells.append(cell)
        v = verdicts.get((trace, boot))
        goal = "" if v is None else ("met" if v["met"] else "not met")
        out.append(f"| {trace} | {boot:.0f} | " + " | ".join(cells) + f" | {goal} |")
    out.append("")
    out.append(
        "| shape | boot s | policy | node-h | p50 | p95 | actions | reversals | false term |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|")
    acc: dict[tuple[str, float, str], list[dict]] = defaultdict(list)
    for r in rows:
        acc[(r.get("shape", r["trace"]), r["boot_s"], r["policy"])].append(r)
    for (shape, boot, pol), rs in acc.items():
        n = len(rs)
        out.append(
            f"| {shape} | {boot:.0f} | {pol} "
            f"| {sum(r['node_hours'] for r in rs) / n:.1f} "
            f"| {sum(r['slowdown_p50'] for r in rs) / n:.2f} "
            f"| {sum(r['slowdown_p95'] for r in rs) / n:.2f} "
            f"| {sum(r['scaling_actions'] for r in rs) / n:.0f} "
            f"| {sum(r['reversals'] for r in rs) / n:.1f} "
            f"| {sum(r['false_terminations'] for r in rs)} |"
        )
    return "\n".join(out)


def print_frontier(rows: list[dict]) -> None:
    """For each (trace, boot) and baseline: which settings of the sparkplane family
    (bench.sim.policies.FRONTIER: the preference knob, cost ... latency) are Pareto-better."""
    from rich.console import Console
    from rich.table import Table

    groups: dict[tuple[str, float], dict[str, dict]] = defaultdict(dict)
    for r in rows:
        groups[(r["trace"], r["boot_s"])][r["policy"]] = r
    t = Table(
        title="Which preference settings (cost cheapest .. latency most responsive) are "
        "Pareto-better than each baseline"
    )
    t.add_column("trace")
    t.add_column("boot s")
    for b in BASELINES:
        t.add_column(b)
    t.add_column("cost .. latency: node-h / p95")
    covered = total = 0
    for (trace, boot), by in groups.items():
        cells = []
        for b in BASELINES:
            ks = [
                k.removeprefix("sparkplane-")
                for k in FRONTIER
                if k in by and b in by and beats(by[k], by[b])
            ]
            total += 1
            covered += bool(ks)
            cells.append(",".join(ks) or "-")
        pts = "  ".join(
            f"{by[k]['node_hours']:.0f}/{by[k]['slowdown_p95']:.2f}" for k in FRONTIER if k in by
        )
        t.add_row(trace, f"{boot:.0f}", *cells, pts)
    Console(width=200).print(t)
    print(f"{covered} of {total} (trace, boot, baseline) triples: some setting is Pareto-better")


def plot(trace: Trace, boot_s: float, policies: Sequence[str], out: Path) -> None:
    """Demand (tasks running with unlimited capacity, in workers) against each policy's
    capacity (workers billed, workers ready)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = 30.0
    demand = demand_curve(trace, step)
    fig, axes = plt.subplots(len(policies), 1, figsize=(12, 1.9 * len(policies)), sharex=True)
    cap = trace.cluster.max_workers
    for ax, name in zip(axes, policies, strict=True):
        r = _run_one((trace, name, boot_s, step, 0.0, {}))
        xs = [t / 3600 for t, _ in demand]
        ax.fill_between(
            xs,
            [min(v, cap * 1.5) for _, v in demand],
            step="post",
            alpha=0.3,
            color="tab:gray",
            label="demand (unlimited capacity)",
        )
        tl = r.timeline
        ax.step(
            [x[0] / 3600 for x in tl],
            [x[1] for x in tl],
            where="post",
            lw=1,
            color="tab:red",
            label="billed",
        )
        ax.step(
            [x[0] / 3600 for x in tl],
            [x[2] for x in tl],
            where="post",
            lw=1,
            color="tab:blue",
            label="ready",
        )
        ax.set_ylabel("workers")
        ax.set_ylim(0, cap * 1.3)
        ax.set_title(
            f"{name}: {r.node_hours:.1f} node-h, p95 slowdown {r.slowdown_p95:.2f}, "
            f"{r.scaling_actions} actions, {r.reversals} reversals",
            fontsize=9,
            loc="left",
        )
    axes[0].legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel("hours")
    fig.suptitle(f"{trace.name}, boot {boot_s:.0f} s", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------------------
# Scale check: the policy part of one autoscaling timer tick over 10,000 clusters.


def synthetic_clusters(n: int, seed: int = 7) -> list[tuple]:
    rng = random.Random(seed)
    out = []
    now = 10_000_000
    for c in range(n):
        lo = rng.randint(1, 4)
        hi = lo + rng.randint(2, 30)
        cur = rng.randint(lo, hi)
        slots = rng.choice((4, 8, 16))
        base = rng.randint(0, hi * slots)
        samples = []
        for k in range(10):
            ts = now - (9 - k) * 10_000
            run = min(cur * slots, max(0, base + rng.randint(-slots, slots)))
            pend = max(0, rng.randint(-2 * slots, 2 * slots)) if rng.random() < 0.4 else 0
            workers = tuple(
                WorkerLoad(
                    f"c{c}-w{i}",
                    min(slots, run // max(1, cur)),
                    rng.choice((0, 0, 1 << 20)),
                    0,
                )
                for i in range(cur)
            )
            samples.append(Sample(ts, run, pend, 1 if run else 0, 0, cur * slots, workers))
        out.append((samples, lo, hi, cur, slots, now))
    return out


def scale_check(n: int = 10_000) -> float:
    """One autoscaling + idle tick's policy work over n clusters; returns the CPU seconds."""
    clusters = synthetic_clusters(n)
    params = AutoscaleParams()
    t0, c0 = time.perf_counter(), time.process_time()
    changes = 0
    for samples, lo, hi, cur, slots, now in clusters:
        d = decide_size(samples, lo, hi, cur, slots, None, now, params)
        la = last_activity(samples, now - 3_600_000)
        idle_decision(la, 60, now, samples[-1].busy)
        changes += d.target != cur
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"scale check: decide_size + last_activity + idle_decision over {n} clusters "
        f"(10 samples each): {cpu:.3f} s CPU, {wall:.3f} s wall ({changes} size changes); "
        "target < 1 s"
    )
    return cpu


# ------------------------------------------------------------------------------------------


def _seed_list(text: str) -> list[int]:
    """`1,2,3` or `1`: the seeds of one --seeds word."""
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.autoscale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--trace", type=Path, help="a CSV trace (submit_s,tasks,task_s[,shuffle_mb])")
    ap.add_argument("--json", type=Path, help="write the result rows (a JSON list) here")
    ap.add_argument("--plot", type=Path, help="draw demand against capacity per policy (PNG)")
    ap.add_argument("--plot-trace", help="which trace to plot (default: the first)")
    ap.add_argument("--boot", type=float, nargs="+", help="boot delays in s (default 60 180)")
    ap.add_argument(
        "--seeds",
        type=_seed_list,
        nargs="+",
        default=[[0, 1, 2]],
        help="seeds, space- or comma-separated (default 0 1 2)",
    )
    ap.add_argument(
        "--generated",
        type=int,
        metavar="N",
        help="run the generated shapes gen-00 .. gen-<N-1> (bench/sim/generated.py), each seed",
    )
    ap.add_argument(
        "--scenarios",
        action="store_true",
        help="run the scenario shapes (bench/sim/scenarios.py), each seed, on the cluster "
        "--trace gives a CSV file (--min-workers ... --autotermination)",
    )
    ap.add_argument(
        "--week", action="store_true", help="run the 7-day office-hours and nightly-etl traces"
    )
    ap.add_argument(
        "--pool-idle",
        type=int,
        help="every cluster draws from an instance pool keeping this many idle instances",
    )
    ap.add_argument(
        "--pool-acquire-s",
        type=float,
        default=20.0,
        help="join time of a worker taken from the pool's idle instances (default 20)",
    )
    ap.add_argument(
        "--warmup-s",
        type=float,
        default=0.0,
        help="leave jobs submitted before S out of the slowdowns; count node-hours from S on",
    )
    ap.add_argument("--quick", action="store_true", help="one seed, boot 60 s, 6 h of SWIM")
    ap.add_argument(
        "--policies", nargs="+", default=list(POLICIES), choices=[*POLICIES, *FRONTIER, *PREDICTIVE]
    )
    ap.add_argument(
        "--preference",
        choices=list(PREFERENCES),
        help="the CSV trace's cluster sets spark.sparkplane.autoscaling.preference to this",
    )
    ap.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    ap.add_argument("--summary-only", action="store_true", help="skip the per-run table")
    ap.add_argument("--scale-check", action="store_true", help="time decide_size, then exit")
    ap.add_argument(
        "--frontier",
        action="store_true",
        help="add rows sparkplane-<setting> for each preference setting (cost .. latency)",
    )
    ap.add_argument("--export-swim", type=Path, help="write the converted SWIM trace as CSV")
    ap.add_argument(
        "--from-json", type=Path, help="render the tables of an earlier --json run, no runs"
    )
    ap.add_argument("--markdown", action="store_true", help="print markdown tables")
    # cluster spec for --trace and --scenarios
    c = CSV_CLUSTER
    ap.add_argument("--min-workers", type=int, default=c.min_workers)
    ap.add_argument("--max-workers", type=int, default=c.max_workers)
    ap.add_argument("--slots", type=int, default=c.slots_per_worker, help="task slots per worker")
    ap.add_argument("--kind", choices=("all-purpose", "job"), default=c.kind)
    ap.add_argument(
        "--autotermination", type=int, default=c.autotermination_minutes, help="minutes, 0 = off"
    )
    args = ap.parse_args(argv)
    args.seeds = [s for group in args.seeds for s in group]

    if args.scale_check:
        scale_check()
        return 0
    if args.export_swim:
        write_csv(args.export_swim, swim_rows(SWIM_FILE))
        print(f"wrote {args.export_swim}")
        return 0

    if args.from_json:
        rows = json.loads(args.from_json.read_text())
        if args.markdown:
            print(markdown(rows))
        elif any(r["policy"] in FRONTIER for r in rows):
            print_frontier(rows)
        else:
            print_tables(rows, goal_check(rows), full=not args.summary_only)
        return 0

    cluster = ClusterSpec(
        args.min_workers,
        args.max_workers,
        args.slots,
        args.kind,
        args.autotermination or None,
        args.preference,
    )
    family = args.generated or args.week or args.scenarios
    if args.trace:
        traces = [load_csv(args.trace, cluster)]
        boots = args.boot or list(DEFAULT_BOOTS)
    elif family:
        traces = generated_traces(args.generated, args.seeds) if args.generated else []
        if args.scenarios:
            traces += scenario_traces(args.seeds, cluster)
        if args.week:
            traces += week_traces(args.seeds)
        boots = args.boot or list(DEFAULT_BOOTS)
    elif args.quick:
        traces = [swim_trace(hours=6)] + [make(args.seeds[0]) for make in SHAPES.values()]
        boots = args.boot or [60.0]
    else:
        traces = builtin_traces(args.seeds)
        boots = args.boot or list(DEFAULT_BOOTS)

    t0 = time.perf_counter()
    policies = args.policies
    if args.frontier:
        policies = [*policies, *(f for f in FRONTIER if f not in policies)]
    sim_kw = {}
    if args.pool_idle is not None:
        sim_kw = {"pool_min_idle": args.pool_idle, "pool_acquire_s": args.pool_acquire_s}
    results = run_all(
        traces, boots, policies, workers=args.workers, warmup_s=args.warmup_s, sim_kw=sim_kw
    )
    rows = [r.row() for r in results]
    elapsed = time.perf_counter() - t0
    if family:
        ours = [p for p in policies if p.startswith(OURS) and p != "sparkplane-noterm"]
        print(sweep.markdown(rows, ours, [b for b in BASELINES if b in policies]))
        if args.frontier:
            cov = sweep.covered(rows, list(FRONTIER), BASELINES)
            for b, k in cov["covered"].items():
                print(f"some preference setting is Pareto-better than {b} in {k} of {cov['cells']}")
        for name in ours:
            for v in sweep.static_goal(rows, name):
                if v["trace"].startswith(tuple(WEEK_SHAPES)):
                    print(
                        f"{name} on {v['trace']} boot {v['boot_s']:.0f}: node-h "
                        f"{v['node_hours_vs_max']:.2f}x static-max's, p95 {v['p95_vs_max']:.2f}x: "
                        + ("met" if v["met"] else "not met")
                    )
    elif args.markdown:
        print(markdown(rows))
    elif args.frontier:
        print_frontier(rows)
    else:
        print_tables(rows, goal_check(rows), full=not args.summary_only)
    unfinished = [r for r in rows if r["jobs_finished"] != r["jobs"]]
    if unfinished:
        print(f"WARNING: {len(unfinished)} runs did not finish every job")
    print(f"{len(rows)} runs in {elapsed:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.json}")
    if args.plot and not args.frontier:
        name = args.plot_trace or traces[0].name
        pick = [t for t in traces if t.name == name]
        if not pick:
            print(f"no trace named {name}; known: {', '.join(t.name for t in traces)}")
            return 2
        plot(pick[0], boots[0], [p for p in args.policies if p != "sparkplane-noterm"], args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
