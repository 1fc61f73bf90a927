"""Request rate limits of the REST API (``/v1``), per credential, in Redis so every API replica
shares them.

Who is limited how: each tenant-scoped credential (a tenant key, a tenant admin account's
access tokens together) by its tenant's plan (``api_requests_per_minute``, ``api_burst``;
``C3_API_RATE_*`` when the plan sets none); each operator credential (an operator account, an
operator-organisation key, the bootstrap token) by ``C3_API_OPERATOR_RATE_*``; requests without
a valid credential by ``C3_API_ANONYMOUS_RATE_*`` per client address. Health, metrics, the
portal's pages and the homeservers' application-service pushes are not under ``/v1`` and are
not limited.

The algorithm is GCRA (the generic cell rate algorithm: a token bucket without a refill timer)
in one Lua script, so a request costs one Redis round trip and a credential one key holding one
number, its theoretical arrival time. Unlike fixed windows it never lets a client send twice
the rate across a window boundary, unlike a sliding log it stores nothing per request, and the
remaining allowance and the time until the bucket is full fall out of that one number. Redis's
own clock is used, so replicas with skewed clocks agree.

This runs as middleware outside the idempotency middleware and before any route: a refused
request is answered 429 before anything is written (no Idempotency-Key claim, no key-use mark).
With Redis unavailable the limit fails open (a warning in the log); authentication itself
needs Redis (``throttle``) and answers 503 then.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter
from starlette.requests import Request

from platform_core.auth import Principal, bearer_token
from platform_core.db import async_sessionmaker_
from platform_core.errors import C3Error, TooManyRequests
from platform_core.redis import async_client, keys_for
from platform_core.settings import Settings, get_settings
from tenant_api.deps import authenticate
from tenant_api.kit.problems import PROBLEM, problem_body
from tenant_api.metrics.latency import REGISTRY
from tenant_api.middleware import DATABASE_UNAVAILABLE
from tenant_api.plans.repository import PlanRepository
from tenant_api.throttle import Throttle, client_address

log = logging.getLogger(__name__)

REFUSED = Counter(
    "c3_api_rate_limited_total",
    "API requests refused 429 by the rate limit, by kind of caller",
    ["principal"],  # operator, tenant_admin, api_key, anonymous
    registry=REGISTRY,
)
UNENFORCED = Counter(
    "c3_api_rate_limit_unenforced_total",
    "API requests let through without a rate-limit decision because Redis was unavailable",
    registry=REGISTRY,
)

LIMITED_PREFIX = "/v1/"
ANONYMOUS = "anonymous"
_US = 1_000_000

# KEYS[1]: the bucket; ARGV[1]: emission interval (µs per request), ARGV[2]: burst.
# Returns {allowed (1/0), µs until a request would be allowed, µs until the bucket is full}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allowed_at = new_tat - interval * tonumber(ARGV[2])
if now < allowed_at then
  return {0, allowed_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000))
return {1, 0, new_tat - now}
"""


@dataclass(frozen=True)
class Quota:
    """A request rate with a burst: an idle credential may send ``burst`` requests at once,
    then one every ``60 / per_minute`` seconds."""

    per_minute: int
    burst: int

    @property
    def interval_us(self) -> int:
        return max(1, round(60 * _US / self.per_minute))


def plan_quota(plan_limits: dict[str, Any], settings: Settings) -> Quota:
    """A tenant-scoped credential's quota: its plan's, else the platform default. A plan that
    sets only the rate gets a burst of one minute's worth."""
    rate = plan_limits.get("api_requests_per_minute")
    burst = plan_limits.get("api_burst")
    if rate is None:
        return Quota(settings.api_rate_per_minute, int(burst or settings.api_rate_burst))
    return Quota(int(rate), int(burst or rate))


def operator_quota(settings: Settings) -> Quota:
    return Quota(settings.api_operator_rate_per_minute, settings.api_operator_rate_burst)


def anonymous_quota(settings: Settings) -> Quota:
    return Quota(settings.api_anonymous_rate_per_minute, settings.api_anonymous_rate_burst)


@dataclass(frozen=True)
class Decision:
    quota: Quota
    allowed: bool
    remaining: int
    reset_s: int  # until the bucket is full again (RateLimit-Reset)
    retry_after_s: int  # until the next request is allowed (0 when allowed)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """RateLimit-Limit is the burst (the most RateLimit-Remaining can be); RateLimit-Reset
        the seconds until it is back to that; RateLimit-Policy names the sustained rate."""
        policy = f"{self.quota.per_minute};w=60;burst={self.quota.burst}"
        values = [
            (b"ratelimit-limit", str(self.quota.burst)),
            (b"ratelimit-remaining", str(self.remaining)),
            (b"ratelimit-reset", str(self.reset_s)),
            (b"ratelimit-policy", policy),
        ]
        if not self.allowed:
            values.append((b"retry-after", str(self.retry_after_s)))
        return [(name, value.encode()) for name, value in values]


def decision_from(reply: list[int], quota: Quota) -> Decision:
    allowed, wait_us, full_in_us = (int(v) for v in reply)
    interval = quota.interval_us
    remaining = max(0, (quota.burst * interval - full_in_us) // interval) if allowed else 0
    return Decision(
        quota,
        allowed=bool(allowed),
        remaining=remaining,
        reset_s=math.ceil(full_in_us / _US),
        retry_after_s=max(1, math.ceil(wait_us / _US)) if not allowed else 0,
    )


class RateLimiter:
    """Takes one request from a bucket in Redis; None when Redis cannot be asked (fail open)."""

    _warned_at = 0.0  # one warning per minute per process while Redis is away, not per request

    def __init__(self, settings: Settings) -> None:
        self.client = async_client(settings)
        self.keys = keys_for(settings)

    async def take(self, bucket: str, quota: Quota) -> Decision | None:
        try:
            reply = await self.client.eval(
                _GCRA, 1, self.keys.api_rate(bucket), quota.interval_us, quota.burst
            )
        except (aioredis.RedisError, OSError) as exc:
            UNENFORCED.inc()
            now = time.monotonic()
            if now - RateLimiter._warned_at > 60:
                RateLimiter._warned_at = now
                log.warning(
                    "API rate limits not enforced: Redis unavailable (%s); failing open",
                    type(exc).__name__,
                )
            return None
        return decision_from(reply, quota)


class _RecentCallers:
    """Who a credential was found to be, and its plan's limits, kept for a few seconds per
    process (by the credential's SHA-256, only after it authenticated): a busy credential's
    requests then cost one Redis round trip each and no query. Safe because this only picks
    the bucket; the route authenticates every request afresh (a key revoked a second ago is
    charged to its own bucket, then refused 401). A plan's changed limit applies on every
    replica within ``ttl_s``."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[float, Principal, dict[str, Any]]] = {}

    def get(self, token: str) -> tuple[Principal, dict[str, Any]] | None:
        entry = self._entries.get(hashlib.sha256(token.encode()).digest())
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1], entry[2]

    def put(self, token: str, principal: Principal, plan_limits: dict[str, Any]) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # bounded memory; the next requests fill it again
        expires = time.monotonic() + self.ttl_s
        self._entries[hashlib.sha256(token.encode()).digest()] = (expires, principal, plan_limits)


RECENT_CALLERS_TTL_S = 5.0
_recent = _RecentCallers(RECENT_CALLERS_TTL_S)


def _authorization(scope: dict[str, Any]) -> str | None:
    for key, value in scope["headers"]:
        if key == b"authorization":
            return str(value.decode("latin-1"))
    return None


async def _principal(scope: dict[str, Any], settings: Settings) -> tuple[Principal, Quota] | None:
    """Who calls and their quota, without writing anything; None: no valid credential (the
    route itself answers 401 and counts the failure)."""
    try:
        token = bearer_token(_authorization(scope))
    except C3Error:
        return None
    known = _recent.get(token)
    if known is None:
        known = await _identify(token, settings)
        if known is None:
            return None
        _recent.put(token, *known)
    principal, plan_limits = known
    if principal.tenant_id is None:
        return principal, operator_quota(settings)
    return principal, plan_quota(plan_limits, settings)


async def _identify(token: str, settings: Settings) -> tuple[Principal, dict[str, Any]] | None:
    async with async_sessionmaker_()() as session:
        try:
            principal = await authenticate(
                token, settings, session, Throttle.for_settings(settings), record_use=False
            )
        except C3Error:  # invalid, or its revocation unknowable (Redis): the route decides
            return None
        if principal.tenant_id is None:
            return principal, {}
        return principal, await PlanRepository(session).limits_of_tenant(principal.tenant_id)


async def _refuse(send: Any, decision: Decision, path: str, anonymous: bool) -> None:
    who = (
        "requests without a valid credential from your address"
        if anonymous
        else ("this credential's requests")
    )
    detail = (
        f"Rate limit exceeded: {who} are limited to {decision.quota.per_minute} per minute "
        f"(bursts of {decision.quota.burst}); retry after {decision.retry_after_s} s"
    )
    body = json.dumps(
        problem_body(
            429,
            TooManyRequests.title,
            detail,
            type_slug=TooManyRequests.type_slug,
            instance=path,
        )
    ).encode()
    headers = [
        (b"content-type", PROBLEM.encode()),
        (b"content-length", str(len(body)).encode()),
        *decision.headers(),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RateLimitMiddleware:
    """Every ``/v1`` request takes one from its credential's (or its address's) bucket; the
    answer carries the RateLimit-* headers, and a request over the limit gets 429 with
    Retry-After before anything else runs."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(LIMITED_PREFIX):
            await self.app(scope, receive, send)
            return
        decided = await self._decide(scope)
        if decided is None:
            await self.app(scope, receive, send)
            return
        decision, kind = decided
        if not decision.allowed:
            REFUSED.labels(kind).inc()
            await _refuse(send, decision, scope["path"], anonymous=kind == ANONYMOUS)
            return
        extra = decision.headers()

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _decide(self, scope: dict[str, Any]) -> tuple[Decision, str] | None:
        """This request's decision and the kind of caller (a principal kind or ``anonymous``);
        None: not limited (Redis or the database unavailable)."""
        settings = get_settings()
        try:
            identified = await _principal(scope, settings)
        except DATABASE_UNAVAILABLE:
            return None  # the route answers 503 itself
        if identified is None:
            bucket, quota = f"address:{client_address(Request(scope))}", anonymous_quota(settings)
            kind = ANONYMOUS
        else:
            bucket, quota = identified[0].actor, identified[1]
            kind = identified[0].kind.value
        decision = await RateLimiter(settings).take(bucket, quota)
        return None if decision is None else (decision, kind)
