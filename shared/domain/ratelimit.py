"""Token-bucket rate limiting per caller, and the client address it is keyed by for requests
without a valid token (pure: the caller passes the time and the header)."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass


@dataclass
class Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`rate` requests per second on average, bursts up to `burst`.

    `take` answers None when the request may go on, else the seconds to wait (Retry-After).
    Buckets idle long enough to be full again are forgotten, so memory stays bounded.
    """

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.buckets: dict[str, Bucket] = {}

    def take(self, key: str, now: float) -> float | None:
        b = self.buckets.get(key)
        if b is None:
            if len(self.buckets) >= self.max_keys:
                self._forget_full(now)
            b = self.buckets[key] = Bucket(float(self.burst), now)
        b.tokens = min(self.burst, b.tokens + (now - b.updated) * self.rate)
        b.updated = now
        if b.tokens >= 1:
            b.tokens -= 1
            return None
        return (1 - b.tokens) / self.rate

    def peek(self, key: str, now: float) -> float | None:
        """What `take` would answer, without taking: None, or the seconds to wait."""
        b = self.buckets.get(key)
        if b is None:
            return None
        tokens = min(self.burst, b.tokens + (now - b.updated) * self.rate)
        return None if tokens >= 1 else (1 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        full_after = self.burst / self.rate
        for k in [k for k, b in self.buckets.items() if now - b.updated >= full_after]:
            del self.buckets[k]


UNKNOWN_ADDRESS = "unknown"


def client_address(forwarded_for: str | None, trusted_hops: int) -> str:
    """The client address of a request, from its X-Forwarded-For header.

    Each proxy appends the address it received the request from, so only the last
    `trusted_hops` entries were written by proxies we trust (the Functions host's front end,
    devhost; plus API Management or Front Door when they are in front): the entry
    `trusted_hops` from the right is the client. Entries left of it are whatever the client
    sent and are ignored. Ports (`1.2.3.4:5678`, `[::1]:5678`) are dropped, and an IPv6 client
    is its /64 (one subscriber's whole prefix, which it can rotate through freely). No usable
    entry: UNKNOWN_ADDRESS (one shared bucket, so a missing header is not a way around it).
    """
    entries = [e.strip() for e in (forwarded_for or "").split(",") if e.strip()]
    if not entries:
        return UNKNOWN_ADDRESS
    entry = entries[max(0, len(entries) - max(1, trusted_hops))]
    if entry.startswith("["):
        entry = entry[1:].partition("]")[0]
    elif entry.count(":") == 1:
        entry = entry.partition(":")[0]
    try:
        ip = ipaddress.ip_address(entry)
    except ValueError:
        return UNKNOWN_ADDRESS
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def window_allowance(rate: float, burst: int, window_s: float) -> int:
    """Failures one address may spend in a window of `window_s` over all instances together:
    what one token bucket of (`rate`, `burst`) lets through in that time."""
    return burst + math.floor(rate * window_s)
