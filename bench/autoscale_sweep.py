"""Summaries of many-trace runs: how often each baseline beats a sparkplane setting.

A cell is one (trace, boot delay) pair. For each baseline and each cell, the comparison of a
sparkplane row (the default `sparkplane`, or a knob setting `sparkplane-<setting>`) with the
baseline's row is one of: sparkplane Pareto-better, identical, baseline Pareto-better, or a
trade-off (cheaper but slower, or the reverse). "Pareto-better" is `bench.autoscale.beats`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

EPS = 1e-9


def beats(ours: dict, other: dict) -> bool:
    """Fewer node-hours at equal or lower p95, or lower p95 at equal or fewer node-hours."""
    nh, p95 = ours["node_hours"], ours["slowdown_p95"]
    onh, op95 = other["node_hours"], other["slowdown_p95"]
    return (nh < onh - EPS and p95 <= op95 + EPS) or (p95 < op95 - EPS and nh <= onh + EPS)


def same(a: dict, b: dict) -> bool:
    return (
        abs(a["node_hours"] - b["node_hours"]) <= EPS
        and abs(a["slowdown_p95"] - b["slowdown_p95"]) <= EPS
    )


def cells(rows: Iterable[dict]) -> dict[tuple[str, float], dict[str, dict]]:
    groups: dict[tuple[str, float], dict[str, dict]] = defaultdict(dict)
    for r in rows:
        groups[(r["trace"], r["boot_s"])][r["policy"]] = r
    return groups


def tally(
    rows: Iterable[dict], ours: str, baselines: Sequence[str]
) -> dict[str, dict[str, int | list[str]]]:
    """Per baseline: cells where `ours` is better / identical / worse / a trade-off, and the
    names of the cells the baseline wins ("trace@boot")."""
    out: dict[str, dict[str, int | list[str]]] = {
        b: {"better": 0, "identical": 0, "worse": 0, "tradeoff": 0, "lost": []} for b in baselines
    }
    for (trace, boot), by in cells(rows).items():
        mine = by.get(ours)
        if mine is None:
            continue
        for b in baselines:
            other = by.get(b)
            if other is None:
                continue
            t = out[b]
            if same(mine, other):
                t["identical"] += 1  # type: ignore[operator]
            elif beats(mine, other):
                t["better"] += 1  # type: ignore[operator]
            elif beats(other, mine):
                t["worse"] += 1  # type: ignore[operator]
                t["lost"].append(f"{trace}@{boot:.0f}")  # type: ignore[union-attr]
            else:
                t["tradeoff"] += 1  # type: ignore[operator]
    return out


def covered(rows: Iterable[dict], settings: Sequence[str], baselines: Sequence[str]) -> dict:
    """Per baseline: in how many cells some setting is Pareto-better than it."""
    out = {b: 0 for b in baselines}
    total = 0
    for by in cells(rows).values():
        if not any(s in by for s in settings):
            continue
        total += 1
        for b in baselines:
            if b in by and any(s in by and beats(by[s], by[b]) for s in settings):
                out[b] += 1
    return {"cells": total, "covered": out}


def static_goal(rows: Iterable[dict], ours: str) -> list[dict]:
    """Per cell: node-hours and p95 of `ours` relative to static-max's (the prediction goal:
    at least 40% fewer node-hours with a p95 at most 1.25x)."""
    out = []
    for (trace, boot), by in cells(rows).items():
        mine, smax = by.get(ours), by.get("static-max")
        if mine is None or smax is None:
            continue
        nh = mine["node_hours"] / smax["node_hours"]
        p95 = mine["slowdown_p95"] / smax["slowdown_p95"]
        out.append(
            {
                "trace": trace,
                "boot_s": boot,
                "policy": ours,
                "node_hours_vs_max": nh,
                "p95_vs_max": p95,
                "met": nh <= 0.6 + EPS and p95 <= 1.25 + EPS,
            }
        )
    return out


def markdown(rows: list[dict], ours: Sequence[str], baselines: Sequence[str]) -> str:
    """One table per sparkplane row name: better / identical / baseline better / trade-off."""
    n = len(cells(rows))
    out = [
        f"{n} (trace, boot) cells.",
        "",
        "| sparkplane row | baseline | sparkplane better | identical | baseline better "
        "| trade-off |",
        "|---|---|---|---|---|---|",
    ]
    for name in ours:
        for b, t in tally(rows, name, baselines).items():
            out.append(
                f"| {name} | {b} | {t['better']} | {t['identical']} | {t['worse']} "
                f"| {t['tradeoff']} |"
            )
    return "\n".join(out)
