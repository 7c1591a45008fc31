"""Token-bucket rate limiting per caller (pure: the caller passes the time)."""

from __future__ import annotations

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

    def _forget_full(self, now: float) -> None:
        full_after = self.burst / self.rate
        for k in [k for k, b in self.buckets.items() if now - b.updated >= full_after]:
            del self.buckets[k]
