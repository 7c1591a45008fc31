"""Throttling of requests without a valid token, per client address (docs/security.md,
"Throttling").

`check` is answered from memory, before anything reads the store: an address that has spent
its budget of failed authentications is refused at once (429), whatever token it sends.
`failed` spends one unit after a failed authentication. With `shared` on, each failure is also
recorded in the store (one small document with a TTL, in the partition of the address and the
current window), and an instance that sees more failures in the window than one bucket would
let through (all instances together) refuses the address until the window ends: so the limit
holds across instances, and an attacker spreading requests over N instances gets at most N
more failures per window through than one instance would let through.

A client that shares its address with an attacker (a NAT, a proxy) keeps working: the
Authorization headers that authenticated on this instance lately are remembered (as SHA-256
hashes, a bounded LRU), and one of those is let through to authentication even from a refused
address (it is still looked up: a revoked one fails, spends a unit and is forgotten).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict

from shared.domain.ratelimit import RateLimiter, window_allowance
from shared.ports import Clock, Store

log = logging.getLogger("sparkplane.throttle")

KIND = "auth-failure"
MAX_BLOCKED = 100_000
MAX_KNOWN_GOOD = 10_000


def _key(authorization: str | None) -> str:
    return hashlib.sha256((authorization or "").encode()).hexdigest()


class AddressThrottle:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        rate: float,
        burst: int,
        window_s: int,
        shared: bool,
    ) -> None:
        self.store = store
        self.clock = clock
        self.local = RateLimiter(rate, burst)
        self.window_ms = window_s * 1000
        self.allowance = window_allowance(rate, burst, window_s)
        self.shared = shared
        self.instance = uuid.uuid4().hex[:12]
        # address -> wall-clock ms until which it is refused (the shared count said so)
        self.blocked: dict[str, int] = {}
        # hashes of Authorization headers that authenticated lately, least recent first
        self.known_good: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, address: str, authorization: str | None) -> float | None:
        """None when a request from `address` may be authenticated, else the seconds to wait
        (Retry-After). Memory only."""
        now_ms = self.clock.now_ms()
        with self._lock:
            if self.known_good and _key(authorization) in self.known_good:
                return None
            until = self.blocked.get(address)
            if until is not None:
                if until > now_ms:
                    return (until - now_ms) / 1000
                del self.blocked[address]
            return self.local.peek(address, time.monotonic())

    def succeeded(self, authorization: str | None) -> None:
        """A request with this Authorization header authenticated."""
        key = _key(authorization)
        with self._lock:
            self.known_good[key] = None
            self.known_good.move_to_end(key)
            if len(self.known_good) > MAX_KNOWN_GOOD:
                self.known_good.popitem(last=False)

    def failed(self, address: str, authorization: str | None) -> None:
        """A request from `address` failed to authenticate."""
        with self._lock:
            self.known_good.pop(_key(authorization), None)
            self.local.take(address, time.monotonic())
        if not self.shared:
            return
        now_ms = self.clock.now_ms()
        window = now_ms // self.window_ms
        pk = f"{address}@{window}"
        try:
            self.store.create(
                KIND,
                pk,
                f"{self.instance}-{uuid.uuid4().hex}",
                {"time": now_ms},
                ttl_s=2 * self.window_ms // 1000,
            )
            seen = self.store.list(KIND, pk, page_size=self.allowance + 1, page_token=None)
        except Exception:
            # The store is unavailable: the 401 is still answered, the local bucket still holds.
            log.exception("could not count a failed authentication in the store")
            return
        if len(seen.items) > self.allowance:
            with self._lock:
                if len(self.blocked) >= MAX_BLOCKED:
                    self._forget_expired(now_ms)
                self.blocked[address] = (window + 1) * self.window_ms
            log.warning("client address throttled", extra={"address": address})

    def _forget_expired(self, now_ms: int) -> None:
        for a in [a for a, until in self.blocked.items() if until <= now_ms]:
            del self.blocked[a]
