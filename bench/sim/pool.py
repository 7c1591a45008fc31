"""An instance pool under one simulated cluster (Databricks instance pools).

A pool keeps `min_idle` idle instances, booted ahead and billed while idle. A worker the cluster
requests takes an idle instance when there is one and joins after `acquire_s` (attach and
start the Spark worker, no VM boot), else boots a VM (`boot_s`). Taking an instance makes the
pool boot a replacement; a released worker goes back to the pool when the pool is below
`min_idle`, and is released otherwise. `min_idle` may change during the run (a forecast
driving it: pre-warm the pool, not the cluster); idle instances above it are released at once.
"""

from __future__ import annotations


class Pool:
    def __init__(self, min_idle: int, acquire_s: float, boot_s: float) -> None:
        self.min_idle = max(0, min_idle)
        self.acquire_s = acquire_s
        self.boot_s = boot_s
        self.ready = self.min_idle  # booted before the run starts
        self.booting: list[float] = []  # the times the booting instances become idle
        self.billed_s = 0.0
        self.taken = 0
        self.missed = 0
        self._t = 0.0

    def _advance(self, now: float) -> None:
        self.billed_s += (self.ready + len(self.booting)) * max(0.0, now - self._t)
        self._t = now
        if self.booting:
            done = [t for t in self.booting if t <= now]
            if done:
                self.ready += len(done)
                self.booting = [t for t in self.booting if t > now]

    def _fill(self, now: float) -> None:
        while self.ready + len(self.booting) < self.min_idle:
            self.booting.append(now + self.boot_s)

    def idle(self, now: float) -> int:
        """The idle instances ready to be taken now."""
        self._advance(now)
        return self.ready

    def take(self, now: float) -> float | None:
        """The join delay of a worker taken from the pool, or None (no idle instance: boot)."""
        self._advance(now)
        if self.ready <= 0:
            self.missed += 1
            self._fill(now)
            return None
        self.ready -= 1
        self.taken += 1
        self._fill(now)
        return self.acquire_s

    def give_back(self, now: float) -> None:
        self._advance(now)
        if self.ready + len(self.booting) < self.min_idle:
            self.ready += 1

    def set_min_idle(self, now: float, n: int) -> None:
        self._advance(now)
        self.min_idle = max(0, n)
        extra = self.ready + len(self.booting) - self.min_idle
        if extra > 0:
            cut = min(extra, self.ready)
            self.ready -= cut
            extra -= cut
            if extra > 0:  # cancel the instances booting last
                self.booting = sorted(self.booting)[: len(self.booting) - extra]
        self._fill(now)

    def reset_billing(self, now: float) -> None:
        self._advance(now)
        self.billed_s = 0.0

    def close(self, now: float) -> float:
        """The instance-seconds billed to the pool's idle instances, up to `now`."""
        self._advance(now)
        return self.billed_s
