"""Per-tenant request rate and concurrency limits, enforced by each proxy instance in memory,
with a per-client share inside each so that no single client can use up its tenant's budget.

Rate: a token bucket per tenant (refilled at the route's ``rate_per_second``, holding at most
``rate_burst``), and inside it one per client address (an IPv6 /64 counts as one address) with
``client_rate_share`` of the tenant's rate and burst; a request takes a token from both, and one
that finds either empty gets ``429 M_LIMIT_EXCEEDED`` with ``retry_after_ms``. Concurrency:
requests of a tenant in flight through this instance; one over ``max_concurrent`` gets a fast
``503`` with ``Retry-After`` instead of waiting in a queue (a queue would hold the client's
connection and our memory for a tenant that is saturated already).

A request holds a tenant slot only from when its whole body is in (``Admission.take_tenant_slot``;
the forwarder receives a body of up to 1 MiB before it sends anything upstream; a larger upload
is streamed and takes its slot from its head on) until it is answered: a client that sends a
request head and then trickles its body (or stops) holds no tenant slot. From its
head on it holds one of its client address's slots, at most ``client_concurrency_share`` of the
tenant's (at least 1): one address cannot park more than that many requests, however slowly it
sends, nor fill the tenant's slots with requests the homeserver is slow to answer.

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

import functools
import math
import time
from collections.abc import Callable
from ipaddress import IPv6Address, IPv6Network, ip_address

from homeserver_proxy import errors
from platform_core.routes import Route

Clock = Callable[[], float]

# Idle client budgets (nothing in flight, bucket full again) are forgotten this often: one
# that comes back starts with a full bucket, exactly as if it had been kept.
_SWEEP_INTERVAL_S = 10.0


@functools.lru_cache(maxsize=65_536)  # per request on the hot path; parsing is the cost
def client_key(address: str) -> str:
    """What one client is, for the limits: its IPv4 address, or its IPv6 /64 (one host
    commonly holds a whole /64, and could otherwise be 2^64 clients)."""
    try:
        parsed = ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, IPv6Address):
        return str(IPv6Network((parsed, 64), strict=False))
    return address


class Budget:
    """A token bucket and a count of requests in flight."""

    __slots__ = ("burst", "in_flight", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now
        self.in_flight = 0

    def wait_ms(self) -> int:
        return math.ceil((1.0 - self.tokens) / self.rate * 1000)

    def refund(self) -> None:
        self.tokens = min(self.burst, self.tokens + 1.0)

    def idle(self, now: float) -> bool:
        return self.in_flight == 0 and self.tokens + (now - self.updated) * self.rate >= self.burst


class Admission:
    """One admitted request. Counted requests (not long-polls) hold a slot of their client
    from admission and must call ``take_tenant_slot`` before going upstream; ``release`` (safe
    to call more than once) when answered."""

    __slots__ = ("_client", "_counted", "_limit", "_tenant", "_upstream")

    def __init__(
        self, tenant: Budget, client: Budget, limit: int, counted: bool, upstream: bool
    ) -> None:
        self._tenant = tenant
        self._client = client
        self._limit = limit
        self._counted = counted
        self._upstream = upstream  # holds its tenant slot

    def take_tenant_slot(self) -> None:
        """Take a tenant slot, or raise the fast 503 (the request is then not forwarded: its
        tokens are given back and its client slot freed)."""
        if not self._counted or self._upstream:
            return
        if self._tenant.in_flight >= self._limit:
            self._tenant.refund()
            self._client.refund()
            self.release()
            raise errors.too_many_in_flight()
        self._tenant.in_flight += 1
        self._upstream = True

    def release(self) -> None:
        if not self._counted:
            return
        self._counted = False
        self._client.in_flight -= 1
        if self._upstream:
            self._tenant.in_flight -= 1
            self._upstream = False


class _Limits:
    """A tenant's limits under one route, its budget, and its clients' budgets by address."""

    __slots__ = (
        "route",
        "rate",
        "burst",
        "client_rate",
        "client_burst",
        "limit",
        "slots",
        "budget",
        "by_address",
    )

    def __init__(
        self,
        route: Route,
        rate: float,
        burst: float,
        client_rate: float,
        client_burst: float,
        limit: int,
        slots: int,
        budget: Budget,
    ) -> None:
        self.route = route
        self.rate = rate
        self.burst = burst
        self.client_rate = client_rate
        self.client_burst = client_burst
        self.limit = limit  # the tenant's requests in flight
        self.slots = slots  # a client's
        self.budget = budget
        self.by_address: dict[str, Budget] = {}


class TenantLimiter:
    def __init__(
        self,
        clock: Clock = time.monotonic,
        *,
        client_concurrency_share: float = 1.0,
        client_rate_share: float = 1.0,
    ) -> None:
        self._clock = clock
        self._concurrency_share = client_concurrency_share
        self._rate_share = client_rate_share
        self._tenants: dict[str, Budget] = {}
        self._clients: dict[tuple[str, str], Budget] = {}
        # Per tenant, what ``take`` uses (with the same budgets by address): made anew from
        # the route after each sweep and for each new route.
        self._limits: dict[str, _Limits] = {}
        self._swept = clock()

    def admit(
        self, route: Route, client: str, *, long_poll: bool, body_in: bool = False
    ) -> Admission:
        """Take a token of the tenant and of ``client`` (and a slot of ``client`` unless
        ``long_poll``), or raise the Matrix error to answer with. ``body_in``: the whole body
        is in hand already, so a counted request takes its tenant slot now too (as
        ``Admission.take_tenant_slot`` would, at once)."""
        tenant, own, limit = self.take(route, client, long_poll, body_in)
        counted = not long_poll
        return Admission(tenant, own, limit, counted, counted and body_in)

    def take(
        self, route: Route, client: str, long_poll: bool, body_in: bool
    ) -> tuple[Budget, Budget, int]:
        """``admit`` without making its ``Admission`` (~3,500 instructions with its
        ``release``): the tenant's and the client's budgets and the tenant's limit. For the
        fast lane, which takes with ``body_in`` and gives a counted request's slots back with
        ``give_back`` once, when its exchange ends.

        On every proxied request: one lookup finds the tenant's limits, budget and clients
        (``_Limits``), the buckets' refills are written out here, and the bounds are
        comparisons, not ``min``/``max`` calls (each a call of its own; measured with
        benchmarks/proxy_instructions_bench.py)."""
        now = self._clock()
        if now - self._swept >= _SWEEP_INTERVAL_S:
            self._sweep(now)
        limits = self._limits.get(route.tenant_id)
        if limits is None or limits.route is not route:
            limits = self._limits_of(route, now)
        own = limits.by_address.get(client)
        if own is None:
            own = self._client_budget(limits, client, now)
        # The client's own bucket first: a client over its share is told its own wait, and
        # takes nothing from the tenant's bucket. (``Budget.refill``, for both: their rates
        # and bursts are the route's, set when ``_Limits`` finds them.)
        burst = limits.client_burst
        tokens = own.tokens + (now - own.updated) * limits.client_rate
        own.tokens = tokens = tokens if tokens < burst else burst
        own.updated = now
        if tokens < 1.0:
            raise errors.rate_limited(own.wait_ms())
        tenant = limits.budget
        burst = limits.burst
        tokens = tenant.tokens + (now - tenant.updated) * limits.rate
        tenant.tokens = tokens = tokens if tokens < burst else burst
        tenant.updated = now
        if tokens < 1.0:
            raise errors.rate_limited(tenant.wait_ms())
        if not long_poll:
            # Refused without taking a token: it used no capacity.
            if own.in_flight >= limits.slots or tenant.in_flight >= limits.limit:
                raise errors.too_many_in_flight()
            own.in_flight += 1
            if body_in:
                tenant.in_flight += 1
        own.tokens -= 1.0
        tenant.tokens -= 1.0
        return tenant, own, limits.limit

    def _limits_of(self, route: Route, now: float) -> _Limits:
        """The tenant's ``_Limits`` for ``route``: worked out once per route, not per request
        (~1,400 instructions): a plan's new limits come in a new route. Its budget (kept across
        routes: it counts what is in flight) takes the route's rate and burst from here on."""
        rate, burst = route.rate_per_second, float(route.rate_burst)
        share = self._rate_share
        client_burst = float(math.floor(burst * share)) if share != 1.0 else burst
        slots = math.floor(route.max_concurrent * self._concurrency_share)
        budget = self._tenants.get(route.tenant_id)
        if budget is None:
            budget = self._tenants[route.tenant_id] = Budget(rate, burst, now)
        budget.rate, budget.burst = rate, burst
        limits = self._limits[route.tenant_id] = _Limits(
            route,
            rate,
            burst,
            rate * share,
            client_burst if client_burst >= 1.0 else 1.0,
            route.max_concurrent,
            slots if slots > 1 else 1,
            budget,
        )
        return limits

    def _client_budget(self, limits: _Limits, client: str, now: float) -> Budget:
        """The budget of ``client`` (by its ``client_key``), kept by its address as it came
        in ``limits`` (``client_key`` not called, no tuple made per request: ~1,200
        instructions)."""
        key = (limits.route.tenant_id, client_key(client))
        own = self._clients.get(key)
        if own is None:
            own = self._clients[key] = Budget(limits.client_rate, limits.client_burst, now)
        else:
            own.rate, own.burst = limits.client_rate, limits.client_burst
        limits.by_address[client] = own
        return own

    @staticmethod
    def give_back(tenant: Budget, client: Budget) -> None:
        """The slots a counted request ``take``n with its body in held (``Admission.release``)."""
        client.in_flight -= 1
        tenant.in_flight -= 1

    def in_flight(self, tenant_id: str) -> int:
        """Requests of the tenant at its homeserver (bodies received, not answered yet)."""
        state = self._tenants.get(tenant_id)
        return state.in_flight if state is not None else 0

    def client_in_flight(self, tenant_id: str, client: str) -> int:
        """Requests of one client of the tenant admitted and not answered yet (bodies still
        arriving included)."""
        state = self._clients.get((tenant_id, client_key(client)))
        return state.in_flight if state is not None else 0

    def _sweep(self, now: float) -> None:
        self._swept = now
        self._limits = {}
        for key in [key for key, budget in self._clients.items() if budget.idle(now)]:
            del self._clients[key]
