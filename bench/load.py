"""API load: concurrent clients on loopback against a devhost.

    .venv/bin/python -m bench.load --clients 200 --seconds 60 --json bench/out/load.json

Each client has its own token (made through the Token API, as users would) and loops over a
read-heavy mix: clusters/get (70%), clusters/list (20%), clusters/events (10%), over 50
clusters created up front. Reports requests/s, latency percentiles, errors (anything but a
2xx) and the devhost's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench.control_plane import RssSampler, pct
from bench.report import emit
from devhost.process import DevhostProcess

SPEC = {"spark_version": "4.1.x-scala2.13", "node_type_id": "rec-small", "num_workers": 1}


async def client_loop(
    h: DevhostProcess, token: str, ids: list[str], until: float, seed: int
) -> tuple[list[float], int]:
    rng = random.Random(seed)
    lat: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=h.url, headers=headers, timeout=30) as c:
        while time.monotonic() < until:
            x = rng.random()
            t = time.perf_counter()
            try:
                if x < 0.7:
                    r = await c.get("/api/2.1/clusters/get", params={"cluster_id": rng.choice(ids)})
                elif x < 0.9:
                    r = await c.get("/api/2.1/clusters/list", params={"page_size": 20})
                else:
                    r = await c.post(
                        "/api/2.1/clusters/events",
                        json={"cluster_id": rng.choice(ids), "limit": 10},
                    )
                ok = r.is_success
            except httpx.HTTPError:
                ok = False
            lat.append((time.perf_counter() - t) * 1000)
            errors += not ok
    return lat, errors


async def drive(h: DevhostProcess, clients: int, seconds: float) -> tuple[list[float], int, float]:
    headers = {"Authorization": f"Bearer {h.token}"}
    async with httpx.AsyncClient(base_url=h.url, headers=headers, timeout=60) as c:
        ids = []
        for i in range(50):
            r = await c.post("/api/2.1/clusters/create", json={**SPEC, "cluster_name": f"l{i}"})
            ids.append(r.raise_for_status().json()["cluster_id"])
        tokens = []
        for i in range(clients):
            r = await c.post("/api/2.0/token/create", json={"comment": f"load-{i}"})
            tokens.append(r.raise_for_status().json()["token_value"])
    t0 = time.monotonic()
    until = t0 + seconds
    results = await asyncio.gather(
        *(client_loop(h, t, ids, until, i) for i, t in enumerate(tokens))
    )
    lat = [x for r in results for x in r[0]]
    return lat, sum(r[1] for r in results), time.monotonic() - t0


def run(clients: int, seconds: float) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="sp-load-"))
    h = DevhostProcess(
        tmp / "data",
        env={
            "SPARKPLANE_LOG_LEVEL": "WARNING",
            # one token per client, all the same user's: room beyond the default quota
            "SPARKPLANE_QUOTA_DEFAULTS": '{"max_tokens_per_user": 100000, "max_clusters": 1000}',
        },
    )
    rss = RssSampler()
    try:
        h.start()
        rss.proc = psutil.Process(h.proc.pid)  # type: ignore[union-attr]
        lat, errors, elapsed = asyncio.run(drive(h, clients, seconds))
    finally:
        rss.stop()
        h.stop()
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(lat),
        "requests_per_s": round(len(lat) / elapsed, 1),
        "p50_ms": round(statistics.median(lat), 2),
        "p99_ms": round(pct(lat, 99), 2),
        "errors": errors,
        "peak_rss_mb": round(rss.peak_mb, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = run(args.clients, args.seconds)
    emit(f"API load, {args.clients} clients, {args.seconds:.0f} s", result, args.json)


if __name__ == "__main__":
    main()
