"""Per-tenant rate and concurrency limits, and the route fields that carry them."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from homeserver_proxy.errors import MatrixError
from homeserver_proxy.limits import TenantLimiter
from platform_core.routes import Route
from provisioner.synapse_config import DEFAULT_LIMITS

ROUTE = Route(
    tenant_id="t1",
    slug="acme",
    server_name="acme.c3.test",
    upstream="http://127.0.0.1:1",
    status="active",
    max_upload_bytes=1024,
    rate_per_second=8.0,  # binary fractions: exact float arithmetic in these tests
    rate_burst=5,
    max_concurrent=2,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1024.0

    def __call__(self) -> float:
        return self.now


def refused(limiter: TenantLimiter, route: Route, *, long_poll: bool = False) -> MatrixError:
    with pytest.raises(MatrixError) as caught:
        limiter.admit(route, long_poll=long_poll)
    return caught.value


def test_a_burst_is_admitted_then_the_rate_applies_with_a_retry_hint() -> None:
    clock = FakeClock()
    limiter = TenantLimiter(clock)
    for _ in range(5):
        limiter.admit(ROUTE, long_poll=True)  # long-polls: tokens only, no slot to release
    error = refused(limiter, ROUTE, long_poll=True)
    assert (error.status, error.errcode) == (429, "M_LIMIT_EXCEEDED")
    assert error.extra == {"retry_after_ms": 125}  # one token at 8/s
    assert (b"retry-after", b"1") in error.headers

    clock.now += 0.0625  # half a token
    assert refused(limiter, ROUTE, long_poll=True).extra == {"retry_after_ms": 63}
    clock.now += 0.0625
    limiter.admit(ROUTE, long_poll=True)
    clock.now += 60  # the bucket refills to its burst size, not beyond
    for _ in range(5):
        limiter.admit(ROUTE, long_poll=True)
    assert refused(limiter, ROUTE, long_poll=True).status == 429


def test_requests_over_the_concurrency_share_get_a_fast_503_without_spending_tokens() -> None:
    limiter = TenantLimiter(FakeClock())
    limiter.admit(ROUTE, long_poll=False)
    limiter.admit(ROUTE, long_poll=False)
    error = refused(limiter, ROUTE)
    assert (error.status, error.errcode) == (503, "M_LIMIT_EXCEEDED")
    assert (b"retry-after", b"1") in error.headers
    limiter.release(ROUTE)
    limiter.admit(ROUTE, long_poll=False)  # a slot came free
    assert limiter.in_flight("t1") == 2
    # 3 tokens spent (the refused request took none): 2 are left.
    limiter.release(ROUTE)
    limiter.release(ROUTE)
    limiter.admit(ROUTE, long_poll=False)
    limiter.admit(ROUTE, long_poll=False)
    assert refused(limiter, ROUTE).status == 429


def test_parked_long_polls_do_not_lock_a_tenant_out() -> None:
    limiter = TenantLimiter(FakeClock())
    route = replace(ROUTE, rate_burst=100)
    for _ in range(50):
        limiter.admit(route, long_poll=True)
    assert limiter.in_flight("t1") == 0
    limiter.admit(route, long_poll=False)


def test_tenants_have_separate_budgets() -> None:
    limiter = TenantLimiter(FakeClock())
    other = replace(ROUTE, tenant_id="t2", slug="globex", server_name="globex.c3.test")
    for _ in range(5):
        limiter.admit(ROUTE, long_poll=True)
    assert refused(limiter, ROUTE, long_poll=True).status == 429
    limiter.admit(other, long_poll=False)
    limiter.admit(other, long_poll=False)


def test_a_plan_change_applies_from_the_next_request() -> None:
    clock = FakeClock()
    limiter = TenantLimiter(clock)
    for _ in range(5):
        limiter.admit(ROUTE, long_poll=True)
    faster = replace(ROUTE, rate_per_second=1024.0, rate_burst=50)
    clock.now += 0.0078125  # 8 tokens at the new rate
    for _ in range(8):
        limiter.admit(faster, long_poll=True)
    assert refused(limiter, faster, long_poll=True).status == 429


def test_routes_published_before_the_limits_existed_get_the_defaults() -> None:
    old = {
        k: v for k, v in json.loads(ROUTE.to_json()).items() if not k.startswith(("rate", "max_c"))
    }
    route = Route.from_json(json.dumps(old))
    assert (route.rate_per_second, route.rate_burst, route.max_concurrent) == (
        DEFAULT_LIMITS["proxy_rate_per_second"],
        DEFAULT_LIMITS["proxy_rate_burst"],
        DEFAULT_LIMITS["proxy_max_concurrent"],
    )
    # And a route from a newer provisioner, with a field this proxy does not know, still loads.
    newer = json.loads(ROUTE.to_json()) | {"some_future_limit": 3}
    assert Route.from_json(json.dumps(newer)) == ROUTE
    assert Route.from_json(ROUTE.to_json()) == ROUTE
