"""Per-tenant request rate and concurrency limits, enforced by each proxy instance in memory.

Rate: a token bucket per tenant (refilled at the route's ``rate_per_second``, holding at most
``rate_burst``); a request that finds no token gets ``429 M_LIMIT_EXCEEDED`` with
``retry_after_ms``. Concurrency: requests of a tenant in flight through this instance; one over
``max_concurrent`` gets a fast ``503`` with ``Retry-After`` instead of waiting in a queue (a
queue would hold the client's connection and our memory for a tenant that is saturated already).

Long-polls (``/sync``, ``/events``) are not counted in flight: a tenant's clients park one each,
for up to their ``timeout``, and counting them would lock the tenant out of everything else.
They still take a token each, so the rate limit bounds how many a tenant can park per instance
(about ``rate_burst + rate_per_second * long-poll duration``; the duration is capped by the
forwarder's upstream timeout), and a long-poll whose client leaves is cancelled at once
(``forwarding._unless_client_leaves``).

The limits hold per instance: behind N replicas a tenant gets up to N times them. That keeps the
hot path free of network round trips; a plan's limits are meant as a guard against runaway
clients, not as a precise quota.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from homeserver_proxy import errors
from platform_core.routes import Route

Clock = Callable[[], float]


class _TenantState:
    __slots__ = ("in_flight", "tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now
        self.in_flight = 0


class TenantLimiter:
    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._tenants: dict[str, _TenantState] = {}

    def admit(self, route: Route, *, long_poll: bool) -> None:
        """Take a token (and a concurrency slot unless ``long_poll``) or raise the Matrix error
        to answer with. Every admitted non-long-poll request must be ``release``d."""
        now = self._clock()
        state = self._tenants.get(route.tenant_id)
        if state is None:
            state = self._tenants[route.tenant_id] = _TenantState(route.rate_burst, now)
        # Refill with the route's current rate: a plan change applies from the next request.
        tokens = min(
            float(route.rate_burst),
            state.tokens + (now - state.updated) * route.rate_per_second,
        )
        state.updated = now
        if tokens < 1.0:
            state.tokens = tokens
            wait_ms = math.ceil((1.0 - tokens) / route.rate_per_second * 1000)
            raise errors.rate_limited(wait_ms)
        if not long_poll and state.in_flight >= route.max_concurrent:
            state.tokens = tokens  # refused without taking a token: it used no capacity
            raise errors.too_many_in_flight()
        state.tokens = tokens - 1.0
        if not long_poll:
            state.in_flight += 1

    def release(self, route: Route) -> None:
        state = self._tenants.get(route.tenant_id)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1

    def in_flight(self, tenant_id: str) -> int:
        state = self._tenants.get(tenant_id)
        return state.in_flight if state is not None else 0
