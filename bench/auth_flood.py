"""A flood of bad tokens against a good client's latency, through the real HTTP server.

    .venv/bin/python -m bench.auth_flood --unthrottled --json bench/out/auth_flood.json

Starts devhost (embedded store and bus, record provisioner). A good client on 127.0.0.1 sends
`clusters/list` with a valid token at a steady `--rate` for `--seconds` (baseline), then again
while `--attackers` connections from another process, on 127.0.0.2 (all of 127/8 is loopback,
and devhost appends each connection's peer to X-Forwarded-For as the Functions front end does),
send requests with random bad tokens as fast as they are answered. Reports the good client's
p50/p99 in both phases and their ratio (issue 15's acceptance: p99 at most 2x), the
attackers' request rate and how many of their requests got 401 (each one a token lookup in
the store) or 429 (refused from memory). `--unthrottled` runs the flood phase once more
against a devhost whose bad-token limit is out of reach, to show what the throttle saves.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.control_plane import pct
from bench.report import emit
from devhost.process import DevhostProcess

OFF = {
    "SPARKPLANE_BAD_AUTH_RATE_LIMIT_PER_S": "1000000",
    "SPARKPLANE_BAD_AUTH_RATE_LIMIT_BURST": "1000000",
}


async def _attack(url: str, connections: int, seconds: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    until = time.monotonic() + seconds
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=url, transport=transport, limits=limits, timeout=30) as c:

        async def one() -> None:
            while time.monotonic() < until:
                headers = {"Authorization": "Bearer dapi" + secrets.token_hex(16)}
                try:
                    r = await c.get("/api/2.1/clusters/list", headers=headers)
                    key = str(r.status_code)
                except httpx.HTTPError:
                    key = "error"
                counts[key] = counts.get(key, 0) + 1

        await asyncio.gather(*(one() for _ in range(connections)))
    return counts


def _attacker(url: str, connections: int, seconds: float, out: Any) -> None:
    out.put(asyncio.run(_attack(url, connections, seconds)))


def good_client(url: str, token: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """Latencies (ms) of `clusters/list` at a steady rate, and the answers that were not 200."""
    lat: list[float] = []
    bad = 0
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        c.get("/api/2.1/clusters/list")  # connect
        start = time.perf_counter()
        n = 0
        while (now := time.perf_counter()) - start < seconds:
            due = start + n / rate
            if due > now:
                time.sleep(due - now)
            t = time.perf_counter()
            r = c.get("/api/2.1/clusters/list")
            lat.append((time.perf_counter() - t) * 1000)
            bad += r.status_code != 200
            n += 1
    return lat, bad


def flood(h: DevhostProcess, rate: float, seconds: float, attackers: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_attacker, args=(h.url, attackers, seconds + 2, out))
    p.start()
    time.sleep(1.5)  # the attacker process is up and flooding
    lat, bad = good_client(h.url, h.token, rate, seconds)
    counts = out.get(timeout=120)
    p.join(30)
    sent = sum(counts.values())
    return {"lat": lat, "bad": bad, "counts": counts, "attack_per_s": sent / (seconds + 2)}


def run(seconds: float, rate: float, attackers: int, unthrottled: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sp-authflood-"))
    quiet = {"SPARKPLANE_LOG_LEVEL": "ERROR"}
    h = DevhostProcess(tmp / "data", env=quiet).start()
    try:
        base, base_bad = good_client(h.url, h.token, rate, seconds)
        f = flood(h, rate, seconds, attackers)
    finally:
        h.stop()
    result: dict[str, Any] = {
        "seconds_per_phase": seconds,
        "good_rate_per_s": rate,
        "attacker_connections": attackers,
        "baseline_p50_ms": round(statistics.median(base), 2),
        "baseline_p99_ms": round(pct(base, 99), 2),
        "flood_p50_ms": round(statistics.median(f["lat"]), 2),
        "flood_p99_ms": round(pct(f["lat"], 99), 2),
        "p99_ratio": round(pct(f["lat"], 99) / pct(base, 99), 2),
        "good_not_200": base_bad + f["bad"],
        "attack_requests_per_s": round(f["attack_per_s"], 1),
        "attack_401": f["counts"].get("401", 0),
        "attack_429": f["counts"].get("429", 0),
        "attack_other": sum(v for k, v in f["counts"].items() if k not in ("401", "429")),
    }
    if unthrottled:
        h = DevhostProcess(tmp / "data-off", env={**quiet, **OFF}).start()
        try:
            u = flood(h, rate, seconds, attackers)
        finally:
            h.stop()
        result |= {
            "unthrottled_flood_p99_ms": round(pct(u["lat"], 99), 2),
            "unthrottled_p99_ratio": round(pct(u["lat"], 99) / pct(base, 99), 2),
            "unthrottled_attack_requests_per_s": round(u["attack_per_s"], 1),
            "unthrottled_attack_401": u["counts"].get("401", 0),
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rate", type=float, default=20, help="good client's requests per second")
    ap.add_argument("--attackers", type=int, default=32, help="attacker connections")
    ap.add_argument("--unthrottled", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = run(args.seconds, args.rate, args.attackers, args.unthrottled)
    emit(
        f"Bad-token flood ({args.attackers} connections) vs a good client at {args.rate:.0f}/s",
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
