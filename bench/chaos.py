"""Chaos: kill -9 of devhost while cluster operations run; afterwards every cluster reaches the
state its accepted operations imply, and nothing is lost, doubled or orphaned.

    .venv/bin/python -m bench.chaos --trials 50 --json bench/out/chaos.json

Each trial starts devhost on a fresh data directory (record provisioner, a random boot delay of
0.3-1.5 s so operations overlap), and a few client threads issue a random mix of create, resize,
edit, restart, delete (terminate), start, permanent-delete, pin and unpin on several clusters
through the HTTP API (mostly commands legal in the cluster's state, some the API refuses).
Operations on one cluster are serialised on the client side, so each cluster's accepted
operations have an order. At a random moment devhost is SIGKILLed — in most trials aimed at a
command in flight: the client that sends it kills devhost 0-3 ms later, while the server reads
or handles it — then restarted, and the runner waits (bounded) until every cluster is in its
desired state.

What the API answered decides what is expected. 200: accepted. An error body (INVALID_STATE,
...): rejected, no effect. A refused connection: not applied. A request whose connection died
at the kill (or a 5xx): unknown — it may or may not have been applied, so a cluster whose last
operation is unknown has two acceptable outcomes, and the runner checks that it ends in one of
them (a create of unknown outcome is found by its unique cluster name).

Checks, after convergence:

- converged: every cluster is RUNNING with the asked worker count (document, executors and
  provisioner nodes), TERMINATED with no nodes, or gone (404, document removed, no nodes) after
  a permanent delete; its spec is the last accepted one (num_workers and an edit marker), and
  it is pinned if the last accepted pin or unpin says so.
- lost: an accepted operation whose effect is missing, or a missing event: every accepted
  state-changing command has its event (CREATING, RESIZING, EDITED, RESTARTING, TERMINATING,
  STARTING, PINNED, UNPINNED) exactly once (events read through the API, limit 500).
- duplicated: an event or command effect seen twice (more command events than accepted
  commands, a RUNNING or UPSIZE_COMPLETED without a command that leads to it, two identical
  events), more nodes than asked, a second cluster for one create.
- orphaned: provisioner nodes (records.db rows with stop_ms NULL and lost=0) of no cluster or
  of a TERMINATED or deleted cluster.

Real Spark (the local provisioner) is not used here yet: a `--spark` run comes later.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench.chaos_model import (
    LEGAL,
    NODE,
    Mismatch,
    Model,
    Observed,
    Op,
    OpKind,
    Tracked,
    V,
    active_nodes,
    check,
    check_events,
    dead_letters,
    stored_clusters,
    weight,
)
from devhost.process import DevhostProcess

# ------------------------------------------------------------------------------- one trial


@dataclass
class TrialResult:
    index: int
    seed: int
    boot_s: float
    kill_after_s: float
    # What the kill hit: "<op> <outcome>" for an aimed kill, "random" otherwise.
    kill_hit: str = "random"
    operations: int = 0
    accepted: int = 0
    # An error answer (INVALID_STATE mostly) or, counted in `refused` too, no connection.
    rejected: int = 0
    refused: int = 0
    unknown: int = 0
    clusters: int = 0
    converged: bool = False
    converge_s: float = 0.0
    trial_s: float = 0.0
    lost: int = 0
    duplicated: int = 0
    orphaned: int = 0
    server_errors: int = 0
    dead_lettered: int = 0
    # Log records at ERROR, or handlers that failed (message abandoned), in devhost's log.
    errors_logged: int = 0
    # For each operation of unknown outcome: whether the end state says it was applied.
    unknown_outcomes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    data_dir: str = ""


class Trial:
    def __init__(
        self,
        index: int,
        seed: int,
        root: Path,
        *,
        threads: int = 3,
        max_clusters: int = 8,
        converge_timeout_s: float = 15.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.index = index
        self.seed = seed
        self.threads = threads
        self.max_clusters = max_clusters
        self.converge_timeout_s = converge_timeout_s
        boot_s = round(self.rng.uniform(0.3, 1.5), 2)
        self.result = TrialResult(
            index, seed, boot_s, kill_after_s=round(self.rng.uniform(1.0, 5.0), 2)
        )
        self.data_dir = root / f"trial-{index:03d}"
        self.result.data_dir = str(self.data_dir)
        self.host = DevhostProcess(
            self.data_dir,
            env={
                "SPARKPLANE_RECORD_BOOT_S": str(boot_s),
                # clusters are rows only: no agent process per driver (no job runs here)
                "SPARKPLANE_RECORD_AGENTS": "false",
                "SPARKPLANE_RECONCILE_INTERVAL_S": "0.3",
                "SPARKPLANE_RECONCILER_SCHEDULE": "*/2 * * * * *",
                "SPARKPLANE_STUCK_AFTER_S": "3",
                "SPARKPLANE_BUS_LOCK_S": "5",
                "SPARKPLANE_RATE_LIMIT_PER_S": "100000",
                "SPARKPLANE_RATE_LIMIT_BURST": "100000",
            },
        )
        self.tracked: list[Tracked] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        # Most trials aim the kill at a command: the next client to send a legal one after the
        # kill time (the "victim") kills devhost itself, 0-3 ms after the request left it, while
        # the server reads or handles it. The other trials kill at a plain random moment.
        self.aim = self.rng.random() < 0.7
        self.kill_delay_s = self.rng.uniform(0.0, 0.003)
        self.arm = threading.Event()
        self.killed = threading.Event()
        self.victim_taken = False
        self.op_seq = 0

    # ---------------------------------------------------------------- operations

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.host.url,
            headers={"Authorization": f"Bearer {self.host.token}"},
            timeout=30,
        )

    def _pick(self, rng: random.Random) -> Tracked | None:
        with self.lock:
            live = [t for t in self.tracked if t.unknown is None and t.cluster_id is not None]
            live = [t for t in live if (m := t.model()) is not None and m.desired != "GONE"]
            room = len(self.tracked) < self.max_clusters
            if room and (len(live) < 3 or (len(live) < 5 and rng.random() < 0.1)):
                t = Tracked(name=f"chaos-{self.index}-{len(self.tracked)}", busy=True)
                self.tracked.append(t)
                return t
            free = [t for t in live if not t.busy]
            if not free:
                return None
            t = rng.choice(free)
            t.busy = True
            return t

    def _choose(self, state: str, rng: random.Random) -> OpKind | None:
        """An operation for a cluster in `state` (None: leave it be this time). Mostly legal
        ones; in transitional states also some the API refuses (INVALID_STATE)."""
        table: dict[str, list[tuple[OpKind | None, float]]] = {
            "RUNNING": [
                ("resize", 4),
                ("edit", 2),
                ("restart", 2),
                ("delete", 1.5),
                ("permanent-delete", 0.2),
                ("pin", 0.5),
                ("unpin", 0.5),
            ],
            "TERMINATED": [
                ("start", 5),
                ("edit", 2),
                ("delete", 0.5),
                ("permanent-delete", 0.3),
                ("pin", 0.5),
                ("unpin", 0.5),
            ],
            "TERMINATING": [("start", 1), ("delete", 0.5), ("pin", 0.5), (None, 3)],
        }
        # A pin or unpin is a write of the document (and a reconcile) at any time.
        transitional: list[tuple[OpKind | None, float]] = [
            ("resize", 2),
            ("edit", 1),
            ("restart", 1),
            ("delete", 1),
            ("permanent-delete", 0.1),
            ("pin", 1),
            ("unpin", 1),
            (None, 3),
        ]
        kinds, weights = zip(*table.get(state, transitional), strict=True)
        return rng.choices(kinds, weights)[0]

    def _request(self, op: Op, t: Tracked) -> tuple[str, str, dict[str, Any]]:
        spec = {"spark_version": V, "node_type_id": NODE, "cluster_name": t.name}
        conf = {"spark_conf": {"chaos.marker": op.marker}}
        match op.kind:
            case "create":
                body = {**spec, **conf, "num_workers": op.workers}
            case "edit":
                body = {**spec, **conf, "num_workers": op.workers, "cluster_id": t.cluster_id}
            case "resize":
                body = {"cluster_id": t.cluster_id, "num_workers": op.workers}
            case _:
                body = {"cluster_id": t.cluster_id}
        return "POST", f"/api/2.1/clusters/{op.kind}", body

    def _send(self, client: httpx.Client, t: Tracked, op: Op, *, legal: bool = True) -> None:
        method, path, body = self._request(op, t)
        outcome = "unknown"
        cluster_id: str | None = None
        victim = False
        if legal and self.arm.is_set():
            with self.lock:
                victim, self.victim_taken = not self.victim_taken, True
        try:
            r = (
                self._send_and_kill(method, path, body)
                if victim
                else client.request(method, path, json=body)
            )
        except httpx.ConnectError:
            outcome = "refused"  # nothing reached the server: not applied
        except httpx.TransportError:
            outcome = "unknown"  # sent; the connection died with the server
        else:
            if r.status_code == 200:
                outcome = "accepted"
                if op.kind == "create":
                    cluster_id = r.json()["cluster_id"]
            elif r.status_code >= 500:
                with self.lock:
                    self.result.server_errors += 1
                    self.result.problems.append(f"{op.kind} {t.name}: {r.status_code} {r.text}")
            else:
                outcome = "rejected"
                code = r.json().get("error_code", "") if r.content else ""
                if code not in ("INVALID_STATE",):
                    with self.lock:
                        self.result.problems.append(f"{op.kind} {t.name}: {r.status_code} {code}")
        with self.lock:
            if victim:
                self.result.kill_hit = f"{op.kind} {outcome}"
            self.result.operations += 1
            match outcome:
                case "accepted":
                    self.result.accepted += 1
                    t.accepted.append(op)
                    if cluster_id is not None:
                        t.cluster_id = cluster_id
                case "rejected":
                    self.result.rejected += 1
                case "refused":
                    self.result.rejected += 1
                    self.result.refused += 1
                case _:
                    self.result.unknown += 1
                    t.unknown = op

    def _send_and_kill(self, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
        """Send one request on a raw socket, SIGKILL devhost while it is being handled, and
        read whatever answer made it out (none: the outcome is unknown)."""
        payload = json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.host.port}\r\n"
            f"Authorization: Bearer {self.host.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        data = b""
        try:
            with socket.create_connection(("127.0.0.1", self.host.port), timeout=30) as s:
                s.sendall(head.encode() + payload)
                time.sleep(self.kill_delay_s)
                self.host.kill9()
                self.killed.set()
                while chunk := s.recv(65536):
                    data += chunk
        except OSError:
            pass
        finally:
            if not self.killed.is_set():
                self.host.kill9()
                self.killed.set()
        head_end = data.find(b"\r\n\r\n")
        if not data.startswith(b"HTTP/1.1 ") or head_end < 0:
            raise httpx.RemoteProtocolError("no answer before the kill")
        status = int(data[9:12])
        content = data[head_end + 4 :]
        return httpx.Response(status, content=content)

    def _step(self, client: httpx.Client, rng: random.Random) -> None:
        t = self._pick(rng)
        if t is None:
            time.sleep(0.02)
            return
        try:
            with self.lock:
                self.op_seq += 1
                marker = f"m{self.op_seq}"
            if t.cluster_id is None:
                self._send(client, t, Op("create", rng.randint(0, 3), marker))
                return
            try:
                r = client.get("/api/2.1/clusters/get", params={"cluster_id": t.cluster_id})
            except httpx.HTTPError:
                return
            if r.status_code != 200:
                return
            state = r.json()["state"]
            kind = self._choose(state, rng)
            if kind is not None:
                legal = kind in LEGAL.get(state, ("delete", "permanent-delete", "pin", "unpin"))
                self._send(client, t, Op(kind, rng.randint(0, 3), marker), legal=legal)
        finally:
            with self.lock:
                t.busy = False

    def _client_loop(self, n: int) -> None:
        rng = random.Random(self.seed * 100 + n)
        with self._client() as client:
            while not self.stop.is_set():
                self._step(client, rng)
                time.sleep(rng.uniform(0.0, 0.15))

    # ---------------------------------------------------------------- checking

    def observe(self, client: httpx.Client) -> Observed:
        listed: dict[str, list[str]] = {}
        page = client.get("/api/2.1/clusters/list", params={"page_size": 1000}).json()
        for c in page.get("clusters", []):
            listed.setdefault(c.get("cluster_name", ""), []).append(c["cluster_id"])
        ids = {t.cluster_id for t in self.tracked if t.cluster_id}
        ids |= {i for v in listed.values() for i in v}
        gets: dict[str, tuple[int, dict[str, Any]]] = {}
        for cid in sorted(ids):
            r = client.get("/api/2.1/clusters/get", params={"cluster_id": cid})
            gets[cid] = (r.status_code, r.json() if r.content else {})
        return Observed(listed, gets, active_nodes(self.data_dir), stored_clusters(self.data_dir))

    def verdicts(self, obs: Observed) -> list[tuple[Tracked, Model | None, list[Mismatch]]]:
        out = []
        for t in self.tracked:
            options = [(m, check(t, m, obs)) for m in t.variants()]
            m, ms = min(options, key=lambda o: weight(o[1]))
            out.append((t, m, ms))
        return out

    def events(self, client: httpx.Client, cid: str) -> list[dict[str, Any]] | None:
        r = client.post(
            "/api/2.1/clusters/events", json={"cluster_id": cid, "order": "ASC", "limit": 500}
        )
        if r.status_code != 200:
            return None
        return list(r.json().get("events", []))

    # ---------------------------------------------------------------- the trial

    def run(self) -> TrialResult:
        t0 = time.monotonic()
        res = self.result
        h = self.host
        h.start()
        try:
            threads = [
                threading.Thread(target=self._client_loop, args=(n,), daemon=True)
                for n in range(self.threads)
            ]
            for th in threads:
                th.start()
            time.sleep(res.kill_after_s)
            if self.aim:
                self.arm.set()
                self.killed.wait(10)
            if not self.killed.is_set():
                h.kill9()
                self.killed.set()
            self.stop.set()
            for th in threads:
                th.join(60)
            h.start()
            restarted = time.monotonic()
            with self._client() as client:
                deadline = restarted + self.converge_timeout_s
                while True:
                    obs = self.observe(client)
                    verdicts = self.verdicts(obs)
                    if all(not ms for _, _, ms in verdicts):
                        res.converged = True
                        break
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.25)
                res.converge_s = round(time.monotonic() - restarted, 2)
                self._tally(client, obs, verdicts)
            res.dead_lettered = dead_letters(self.data_dir)
            for line in self.host.log.read_text(errors="replace").splitlines():
                if '"level": "ERROR"' in line or "message abandoned" in line:
                    res.errors_logged += 1
        finally:
            code = h.stop()
            if code not in (0, -2):
                res.problems.append(f"devhost exited with {code}")
        res.clusters = len(self.tracked)
        res.trial_s = round(time.monotonic() - t0, 2)
        return res

    def _tally(
        self,
        client: httpx.Client,
        obs: Observed,
        verdicts: list[tuple[Tracked, Model | None, list[Mismatch]]],
    ) -> None:
        res = self.result
        for t, _, _ in verdicts:
            cid = t.cluster_id or next(iter(obs.listed.get(t.name, [])), None)
            events = self.events(client, cid) if cid is not None else None
            options = []
            for m in t.variants():
                ms = check(t, m, obs)
                if m is not None and m.desired != "GONE" and cid is not None:
                    ms += check_events(cid, events, m)
                options.append(ms)
            best = min(range(len(options)), key=lambda i: weight(options[i]))
            if t.unknown is not None:
                res.unknown_outcomes.append(
                    f"{t.unknown.kind} {'applied' if best == 1 else 'not applied'}"
                )
            for x in options[best]:
                res.problems.append(f"{x.kind}: {x.what}")
                if x.kind == "lost":
                    res.lost += 1
                elif x.kind == "duplicated":
                    res.duplicated += 1
        # A cluster nobody asked for (the stored documents, deleted ones included).
        known = {t.cluster_id for t in self.tracked} | {
            i for t in self.tracked for i in obs.listed.get(t.name, [])
        }
        for cid in set(obs.docs) - known:
            res.duplicated += 1
            res.problems.append(f"duplicated: {cid}: a cluster no create made")
        # Nodes of no cluster, or of a TERMINATED or permanently deleted one.
        for cid, nodes in obs.nodes.items():
            state = obs.docs.get(cid)
            status, _ = obs.gets.get(cid, (0, {}))
            if state is None or state == "TERMINATED" or (status == 404 and state != "TERMINATING"):
                res.orphaned += sum(nodes.values())
                res.problems.append(f"orphaned: {cid} ({state}): nodes {dict(nodes)}")


# ------------------------------------------------------------------------------- the runner


def run_chaos(
    trials: int = 50,
    *,
    seed: int | None = None,
    threads: int = 3,
    keep: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run `trials` chaos trials; the summary (the JSON the benchmark writes)."""
    seed = random.randrange(2**31) if seed is None else seed
    root = Path(tempfile.mkdtemp(prefix="sp-chaos-"))
    results: list[TrialResult] = []
    t0 = time.monotonic()
    try:
        for i in range(trials):
            r = Trial(i, seed + i, root, threads=threads).run()
            results.append(r)
            ok = r.converged and not (r.lost or r.duplicated or r.orphaned)
            if console is not None:
                console.print(
                    f"trial {i:3d}: {'ok ' if ok else 'BAD'} ops={r.operations:3d}"
                    f" accepted={r.accepted:3d} unknown={r.unknown} clusters={r.clusters}"
                    f" kill@{r.kill_after_s:.2f}s ({r.kill_hit}) converge={r.converge_s:.2f}s"
                    f" lost={r.lost} dup={r.duplicated} orphan={r.orphaned}"
                )
                for p in r.problems[:12]:
                    console.print(f"    {p}", markup=False)
            if ok and not keep:
                shutil.rmtree(r.data_dir, ignore_errors=True)
    finally:
        if not keep and all(r.converged and not r.problems for r in results):
            shutil.rmtree(root, ignore_errors=True)
    total_s = time.monotonic() - t0
    conv = [r.converge_s for r in results]
    return {
        "trials": len(results),
        "operations": sum(r.operations for r in results),
        "converged": sum(r.converged for r in results),
        "lost": sum(r.lost for r in results),
        "duplicated": sum(r.duplicated for r in results),
        "orphaned": sum(r.orphaned for r in results),
        "accepted": sum(r.accepted for r in results),
        "rejected": sum(r.rejected for r in results),
        "refused": sum(r.refused for r in results),
        "unknown": sum(r.unknown for r in results),
        "clusters": sum(r.clusters for r in results),
        "server_errors": sum(r.server_errors for r in results),
        "dead_lettered": sum(r.dead_lettered for r in results),
        "errors_logged": sum(r.errors_logged for r in results),
        "aimed_kills": Counter(r.kill_hit for r in results).most_common(),
        "unknown_outcomes": Counter(u for r in results for u in r.unknown_outcomes).most_common(),
        "seed": seed,
        "timing": {
            "total_s": round(total_s, 1),
            "trial_s_mean": round(statistics.fmean(r.trial_s for r in results), 2),
            "trial_s_max": max(r.trial_s for r in results),
            "converge_s_p50": round(statistics.median(conv), 2),
            "converge_s_max": max(conv),
        },
        "failures": [
            asdict(r)
            for r in results
            if not r.converged or r.lost or r.duplicated or r.orphaned or r.server_errors
        ],
        "data_root": str(root),
    }


def table(summary: dict[str, Any]) -> Table:
    t = Table(title=f"chaos: {summary['trials']} trials (seed {summary['seed']})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in (
        "trials",
        "operations",
        "accepted",
        "rejected",
        "refused",
        "unknown",
        "clusters",
        "converged",
        "lost",
        "duplicated",
        "orphaned",
        "server_errors",
        "dead_lettered",
        "errors_logged",
    ):
        t.add_row(k, str(summary[k]))
    for k, v in summary["timing"].items():
        t.add_row(k, f"{v}")
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None, help="write the summary here")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--threads", type=int, default=3, help="client threads per trial")
    ap.add_argument("--keep", action="store_true", help="keep every trial's data directory")
    args = ap.parse_args()
    console = Console()
    summary = run_chaos(
        args.trials, seed=args.seed, threads=args.threads, keep=args.keep, console=console
    )
    console.print(table(summary))
    if summary["failures"]:
        console.print(f"data directories of failed trials under {summary['data_root']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    bad = summary["lost"] or summary["duplicated"] or summary["orphaned"]
    return 1 if bad or summary["converged"] != summary["trials"] else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
