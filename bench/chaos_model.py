"""Chaos trials' model: what a cluster's accepted operations imply, what the runner observes
afterwards (API, store, provisioner records, bus), and how the two are compared (bench/chaos.py
runs the trials; its docstring states the checks)."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

V = "4.1.x-scala2.13"
NODE = "rec-small"
COMMAND_EVENTS = (
    "CREATING",
    "RESIZING",
    "EDITED",
    "RESTARTING",
    "TERMINATING",
    "STARTING",
    "PINNED",
    "UNPINNED",
)
# Events after which the cluster (re)starts, so one RUNNING event may follow.
ARMS_RUNNING = ("CREATING", "STARTING", "RESTARTING", "EDITED")
TRANSITIONAL = ("PENDING", "RESTARTING", "RESIZING", "TERMINATING")

# The commands the API accepts in a state (others get INVALID_STATE); transitional: delete, pin.
LEGAL = {
    "RUNNING": ("resize", "edit", "restart", "delete", "permanent-delete", "pin", "unpin"),
    "TERMINATED": ("start", "edit", "delete", "permanent-delete", "pin", "unpin"),
}

OpKind = Literal[
    "create", "resize", "edit", "restart", "delete", "start", "permanent-delete", "pin", "unpin"
]
Desired = Literal["RUNNING", "TERMINATED", "GONE"]


# ------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Op:
    kind: OpKind
    workers: int = 0
    marker: str = ""


@dataclass
class Model:
    """What a cluster's accepted operations imply."""

    desired: Desired
    workers: int
    marker: str
    events: Counter[str] = field(default_factory=Counter)
    pinned: bool = False


def apply(m: Model | None, op: Op) -> Model | None:
    """The effect of one accepted operation (the server accepted it, so it was legal)."""
    if op.kind == "create":
        return Model("RUNNING", op.workers, op.marker, Counter({"CREATING": 1}))
    assert m is not None, f"{op.kind} of a cluster that was never created"
    m = replace(m, events=Counter(m.events))
    match op.kind:
        case "resize":
            if op.workers != m.workers:
                m.events["RESIZING"] += 1
            m.workers = op.workers
        case "edit":
            m.events["EDITED"] += 1
            m.workers, m.marker = op.workers, op.marker
        case "restart":
            m.events["RESTARTING"] += 1
        case "start":
            m.events["STARTING"] += 1
            m.desired = "RUNNING"
        case "delete":
            if m.desired == "RUNNING":
                m.events["TERMINATING"] += 1
                m.desired = "TERMINATED"
        case "permanent-delete":
            if m.desired == "RUNNING":
                m.events["TERMINATING"] += 1
            m.desired = "GONE"
        case "pin" | "unpin":
            pinned = op.kind == "pin"
            if m.pinned != pinned:
                m.events["PINNED" if pinned else "UNPINNED"] += 1
            m.pinned = pinned
    return m


@dataclass
class Tracked:
    """One cluster as the clients know it."""

    name: str
    cluster_id: str | None = None
    accepted: list[Op] = field(default_factory=list)
    # The last operation, when its outcome is unknown (no later operation is sent).
    unknown: Op | None = None
    busy: bool = False

    def model(self) -> Model | None:
        m: Model | None = None
        for op in self.accepted:
            m = apply(m, op)
        return m

    def variants(self) -> list[Model | None]:
        base = self.model()
        if self.unknown is None:
            return [base]
        return [base, apply(base, self.unknown)]


# ------------------------------------------------------------------------------- observing


@dataclass
class Observed:
    listed: dict[str, list[str]]  # cluster name -> ids the list API shows
    gets: dict[str, tuple[int, dict[str, Any]]]  # cluster id -> (status, body)
    nodes: dict[str, Counter[str]]  # cluster id -> active nodes per role
    docs: dict[str, str]  # cluster id -> stored state (documents that exist)


def active_nodes(data_dir: Path) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    path = data_dir / "records.db"
    if not path.exists():
        return out
    db = sqlite3.connect(path, timeout=30)
    try:
        rows = db.execute(
            "SELECT cluster_id, role FROM nodes WHERE stop_ms IS NULL AND lost=0"
        ).fetchall()
    finally:
        db.close()
    for cid, role in rows:
        out.setdefault(cid, Counter())[role] += 1
    return out


def stored_clusters(data_dir: Path) -> dict[str, str]:
    db = sqlite3.connect(data_dir / "store.db", timeout=30)
    try:
        rows = db.execute(
            "SELECT id, json_extract(body, '$.state') FROM docs WHERE kind='cluster'"
        ).fetchall()
    finally:
        db.close()
    return {cid: state for cid, state in rows}


def dead_letters(data_dir: Path) -> int:
    db = sqlite3.connect(data_dir / "bus.db", timeout=30)
    try:
        return int(db.execute("SELECT count(*) FROM messages WHERE state=1").fetchone()[0])
    finally:
        db.close()


@dataclass
class Mismatch:
    kind: Literal["pending", "lost", "duplicated"]
    what: str


def check(t: Tracked, m: Model | None, obs: Observed) -> list[Mismatch]:
    """How the observed cluster differs from the model (empty: converged to it)."""
    out: list[Mismatch] = []
    ids = obs.listed.get(t.name, [])
    if len(ids) > 1:
        out.append(Mismatch("duplicated", f"{len(ids)} clusters named {t.name}"))
    cid = t.cluster_id or (ids[0] if ids else None)
    if m is None:
        if cid is not None and (ids or cid in obs.docs or obs.nodes.get(cid)):
            out.append(Mismatch("duplicated", f"{t.name}: exists but its create was not accepted"))
        return out
    assert cid is not None or t.unknown is not None
    if cid is None:
        return [Mismatch("lost", f"{t.name}: accepted create, no cluster")]
    nodes = obs.nodes.get(cid, Counter())
    status, g = obs.gets.get(cid, (0, {}))
    if m.desired == "GONE":
        if status == 200:
            state = g.get("state")
            kind = "pending" if state in TRANSITIONAL else "lost"
            out.append(Mismatch(kind, f"{cid}: permanently deleted but {state}"))
        elif cid in obs.docs:
            out.append(Mismatch("pending", f"{cid}: deleted, document not removed yet"))
        if ids:
            out.append(Mismatch("lost", f"{cid}: permanently deleted but listed"))
        if nodes:
            out.append(Mismatch("pending", f"{cid}: permanently deleted, nodes {dict(nodes)}"))
        return out
    if status != 200:
        return [*out, Mismatch("lost", f"{cid}: GET answered {status}")]
    state = g["state"]
    spec = g.get("spec", {})
    if state in TRANSITIONAL:
        out.append(Mismatch("pending", f"{cid}: {state} ({g.get('state_message', '')})"))
    elif state != m.desired:
        out.append(Mismatch("lost", f"{cid}: {state}, expected {m.desired}"))
    if spec.get("num_workers") != m.workers:
        out.append(Mismatch("lost", f"{cid}: num_workers {spec.get('num_workers')} != {m.workers}"))
    marker = spec.get("spark_conf", {}).get("chaos.marker")
    if marker != m.marker:
        out.append(Mismatch("lost", f"{cid}: spec marker {marker} != {m.marker}"))
    if ("pinned_by_user_name" in g) != m.pinned:
        out.append(Mismatch("lost", f"{cid}: pinned is {not m.pinned}, expected {m.pinned}"))
    want: Counter[str] = Counter()
    if m.desired == "RUNNING":
        want = Counter({"driver": 1, "worker": m.workers}) if m.workers else Counter(driver=1)
        if state == "RUNNING" and len(g.get("executors", [])) != m.workers:
            out.append(Mismatch("pending", f"{cid}: {len(g['executors'])} executors"))
    if nodes != want:
        extra = any(nodes[r] > want[r] for r in nodes)
        kind: Literal["pending", "duplicated"] = "pending"
        if extra and (state == m.desired or state == "TERMINATED"):
            kind = "duplicated"
        out.append(Mismatch(kind, f"{cid}: nodes {dict(nodes)}, expected {dict(want)}"))
    return out


def check_events(cid: str, events: list[dict[str, Any]] | None, m: Model) -> list[Mismatch]:
    """Each accepted command's event exactly once; no RUNNING or UPSIZE_COMPLETED without a
    command that leads to it; no event twice."""
    if events is None:
        return [Mismatch("lost", f"{cid}: no events")]
    out: list[Mismatch] = []
    got = Counter(e["type"] for e in events if e["type"] in COMMAND_EVENTS)
    for typ in COMMAND_EVENTS:
        for _ in range(m.events[typ] - got[typ]):
            out.append(Mismatch("lost", f"{cid}: {got[typ]} {typ} events, {m.events[typ]} asked"))
        for _ in range(got[typ] - m.events[typ]):
            out.append(
                Mismatch("duplicated", f"{cid}: {got[typ]} {typ} events, {m.events[typ]} asked")
            )
    armed_running = armed_upsize = False
    seen: set[str] = set()
    for e in events:
        key = json.dumps([e["timestamp"], e["type"], e.get("details")], sort_keys=True)
        if key in seen:
            out.append(Mismatch("duplicated", f"{cid}: event twice: {key[:160]}"))
        seen.add(key)
        typ = e["type"]
        if typ in ARMS_RUNNING:
            armed_running = True
        elif typ == "RESIZING":
            armed_upsize = True
        elif typ == "RUNNING":
            if not armed_running:
                out.append(Mismatch("duplicated", f"{cid}: a RUNNING event with no start before"))
            armed_running = False
        elif typ == "UPSIZE_COMPLETED":
            if not armed_upsize:
                out.append(Mismatch("duplicated", f"{cid}: UPSIZE_COMPLETED with no RESIZING"))
            armed_upsize = False
    return out


def weight(ms: list[Mismatch]) -> tuple[int, int]:
    return (sum(x.kind != "pending" for x in ms), len(ms))
