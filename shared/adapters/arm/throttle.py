"""Every ARM request through one budget per subscription (shared/domain/arm_budget.py).

`ArmThrottle` is installed in both management clients' pipelines as their raw request and
response hooks (azure-core's CustomHookPolicy, which runs inside the retry policy, once per
attempt), so every request the SDK sends (operations, pages of a listing, `send_request`)
passes it:

- before sending: a token of the request's kind is taken from the subscription's budget; with
  none left, `ProvisionerThrottled` is raised and nothing is sent;
- after: the `x-ms-ratelimit-remaining-subscription-*` header corrects the budget; a 429 shuts
  the bucket for its Retry-After and raises `ProvisionerThrottled` (raised from the hook, it
  passes the SDK's retry policy, which would otherwise sleep in the function and retry).

The lifecycle turns `ProvisionerThrottled` into a scheduled retry of the reconcile.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from shared.domain.arm_budget import (
    HEADER_PREFIX,
    KINDS,
    Admission,
    Budget,
    Kind,
    Priority,
    ReadPriorities,
    kind_of,
    retry_after_s,
)
from shared.ports import ProvisionerThrottled

log = logging.getLogger("sparkplane.arm")

_SUBSCRIPTION = re.compile(r"/subscriptions/([^/?]+)", re.IGNORECASE)


class ArmThrottle:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.budgets: dict[str, Budget] = {}
        self.admission = Admission()
        self.priorities = ReadPriorities()
        self.throttled = 0

    def budget(self, subscription_id: str) -> Budget:
        key = subscription_id.lower()
        b = self.budgets.get(key)
        if b is None:
            b = self.budgets[key] = Budget.new(self.clock())
        return b

    def hooks(self) -> dict[str, Any]:
        """The client keyword arguments that put this throttle in a client's pipeline."""
        return {"raw_request_hook": self.on_request, "raw_response_hook": self.on_response}

    def admit(self, subscription_id: str, workspace_id: str, cluster_id: str) -> None:
        """A create goes now, or ProvisionerThrottled says when to ask again (FIFO per
        workspace, at the rate the subscription's write bucket allows)."""
        with self._lock:
            wait = self.admission.admit(
                workspace_id, cluster_id, self.clock(), self.budget(subscription_id)
            )
        if wait > 0:
            raise ProvisionerThrottled(wait, f"create of {cluster_id} queued")

    def waiting(self, cluster_id: str) -> bool:
        """The cluster's create is queued for admission (nothing of it is in ARM yet)."""
        with self._lock:
            return self.admission.waiting(cluster_id)

    def need(
        self, subscription_id: str, kind: Kind, tokens: int, priority: Priority = "transition"
    ) -> None:
        """Raises ProvisionerThrottled unless `tokens` requests of `kind` can go now, beyond
        the reserve `priority` leaves to those above it: an operation of several requests
        starts only when it can finish."""
        with self._lock:
            wait = self.budget(subscription_id).need(kind, tokens, self.clock(), priority)
        if wait > 0:
            raise ProvisionerThrottled(wait, f"ARM {kind} budget low ({priority})")

    def mark(self, cluster_id: str, reason: str) -> None:
        """Why the cluster's next reads are made (node_health's reasons): their priority."""
        with self._lock:
            self.priorities.mark(cluster_id, reason, self.clock())

    def priority(self, cluster_id: str) -> Priority:
        """The priority of a read of the cluster now (a drift mark is used up)."""
        with self._lock:
            return self.priorities.take(cluster_id, self.clock())

    def on_request(self, request: Any) -> None:
        http = request.http_request
        sub = _subscription(http.url)
        if sub is None:
            return  # not a subscription's request (the token endpoint): no ARM limit
        kind = kind_of(http.method)
        with self._lock:
            wait = self.budget(sub).take(kind, self.clock())
        if wait > 0:
            self.throttled += 1
            raise ProvisionerThrottled(wait, f"ARM {kind} budget spent")

    def on_response(self, response: Any) -> None:
        http = response.http_request
        resp = response.http_response
        sub = _subscription(http.url)
        if sub is None:
            # Not a subscription's request (Resource Graph has limits of its own): a 429 is
            # still a retry later.
            if resp.status_code == 429:
                self.throttled += 1
                raise ProvisionerThrottled(retry_after_s(resp.headers.get("Retry-After")))
            return
        headers = resp.headers
        now = self.clock()
        with self._lock:
            budget = self.budget(sub)
            for kind in KINDS:
                value = headers.get(HEADER_PREFIX + kind)
                if value is not None:
                    try:
                        budget.remaining(kind, float(value), now)
                    except ValueError:
                        continue  # a header that is no number says nothing
            if resp.status_code == 429:
                wait = retry_after_s(headers.get("Retry-After"))
                budget.throttled(kind_of(http.method), wait, now)
        if resp.status_code == 429:
            self.throttled += 1
            log.warning("ARM throttled", extra={"retry_after_s": wait, "method": http.method})
            raise ProvisionerThrottled(wait, "ARM answered 429")


def _subscription(url: str) -> str | None:
    m = _SUBSCRIPTION.search(url)
    return m.group(1) if m else None
