"""Per-tenant rate and concurrency limits, the per-client shares inside them, and the route
fields that carry them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest

from homeserver_proxy.errors import MatrixError
from homeserver_proxy.limits import Admission, TenantLimiter, client_key
from platform_core.routes import (
    DEFAULT_PROXY_MAX_CONCURRENT,
    DEFAULT_PROXY_RATE_BURST,
    DEFAULT_PROXY_RATE_PER_SECOND,
    Route,
)

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


CLIENT = "198.51.100.1"


_SLOT_WITH_ADMISSION = [False]


@pytest.fixture(autouse=True, params=["slot-after-admission", "slot-with-admission"])
def admission_way(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test runs both ways a request whose body is in takes its tenant slot: right
    after its admission (the app's path) and with it (``body_in``: the fast lane's)."""
    _SLOT_WITH_ADMISSION[0] = request.param == "slot-with-admission"
    yield
    _SLOT_WITH_ADMISSION[0] = False


def admit(
    limiter: TenantLimiter, route: Route, client: str = CLIENT, *, long_poll: bool = False
) -> Admission:
    """Admit a request whose body arrives at once (as most do)."""
    if _SLOT_WITH_ADMISSION[0]:
        return limiter.admit(route, client, long_poll=long_poll, body_in=True)
    admission = limiter.admit(route, client, long_poll=long_poll)
    admission.take_tenant_slot()
    return admission


def refused(
    limiter: TenantLimiter, route: Route, client: str = CLIENT, *, long_poll: bool = False
) -> MatrixError:
    with pytest.raises(MatrixError) as caught:
        admit(limiter, route, client, long_poll=long_poll)
    return caught.value


def test_a_burst_is_admitted_then_the_rate_applies_with_a_retry_hint() -> None:
    clock = FakeClock()
    limiter = TenantLimiter(clock)
    for _ in range(5):
        admit(limiter, ROUTE, long_poll=True)  # long-polls: tokens only, no slot to release
    error = refused(limiter, ROUTE, long_poll=True)
    assert (error.status, error.errcode) == (429, "M_LIMIT_EXCEEDED")
    assert error.extra == {"retry_after_ms": 125}  # one token at 8/s
    assert (b"retry-after", b"1") in error.headers

    clock.now += 0.0625  # half a token
    assert refused(limiter, ROUTE, long_poll=True).extra == {"retry_after_ms": 63}
    clock.now += 0.0625
    admit(limiter, ROUTE, long_poll=True)
    clock.now += 60  # the bucket refills to its burst size, not beyond
    for _ in range(5):
        admit(limiter, ROUTE, long_poll=True)
    assert refused(limiter, ROUTE, long_poll=True).status == 429


def test_requests_over_the_concurrency_share_get_a_fast_503_without_spending_tokens() -> None:
    limiter = TenantLimiter(FakeClock())
    first, second = admit(limiter, ROUTE), admit(limiter, ROUTE)
    error = refused(limiter, ROUTE)
    assert (error.status, error.errcode) == (503, "M_LIMIT_EXCEEDED")
    assert (b"retry-after", b"1") in error.headers
    first.release()
    third = admit(limiter, ROUTE)  # a slot came free
    assert limiter.in_flight("t1") == 2
    # 3 tokens spent (the refused request took none): 2 are left.
    second.release()
    third.release()
    third.release()  # releasing twice frees one slot only
    assert limiter.in_flight("t1") == 0
    admit(limiter, ROUTE)
    admit(limiter, ROUTE)
    assert refused(limiter, ROUTE).status == 429


def test_parked_long_polls_do_not_lock_a_tenant_out() -> None:
    limiter = TenantLimiter(FakeClock())
    route = replace(ROUTE, rate_burst=100)
    for _ in range(50):
        admit(limiter, route, long_poll=True)
    assert limiter.in_flight("t1") == 0
    admit(limiter, route)


def test_tenants_have_separate_budgets() -> None:
    limiter = TenantLimiter(FakeClock())
    other = replace(ROUTE, tenant_id="t2", slug="globex", server_name="globex.c3.test")
    for _ in range(5):
        admit(limiter, ROUTE, long_poll=True)
    assert refused(limiter, ROUTE, long_poll=True).status == 429
    admit(limiter, other)
    admit(limiter, other)


def test_a_plan_change_applies_from_the_next_request() -> None:
    clock = FakeClock()
    limiter = TenantLimiter(clock)
    for _ in range(5):
        admit(limiter, ROUTE, long_poll=True)
    faster = replace(ROUTE, rate_per_second=1024.0, rate_burst=50)
    clock.now += 0.0078125  # 8 tokens at the new rate
    for _ in range(8):
        admit(limiter, faster, long_poll=True)
    assert refused(limiter, faster, long_poll=True).status == 429


def test_routes_published_before_the_limits_existed_get_the_defaults() -> None:
    old = {
        k: v for k, v in json.loads(ROUTE.to_json()).items() if not k.startswith(("rate", "max_c"))
    }
    route = Route.from_json(json.dumps(old))
    assert (route.rate_per_second, route.rate_burst, route.max_concurrent) == (
        DEFAULT_PROXY_RATE_PER_SECOND,
        DEFAULT_PROXY_RATE_BURST,
        DEFAULT_PROXY_MAX_CONCURRENT,
    )
    # And a route from a newer provisioner, with a field this proxy does not know, still loads.
    newer = json.loads(ROUTE.to_json()) | {"some_future_limit": 3}
    assert Route.from_json(json.dumps(newer)) == ROUTE
    assert Route.from_json(ROUTE.to_json()) == ROUTE


# Per-client shares ------------------------------------------------------------------------

SHARED = replace(ROUTE, rate_burst=100, max_concurrent=8)


def shared_limiter(clock: FakeClock | None = None) -> TenantLimiter:
    return TenantLimiter(clock or FakeClock(), client_concurrency_share=0.25, client_rate_share=0.5)


def test_a_request_whose_body_has_not_arrived_holds_no_tenant_slot() -> None:
    limiter = shared_limiter()
    # The reviewer's attack: request heads with a trickle of body, from one address.
    parked = [limiter.admit(SHARED, CLIENT, long_poll=False) for _ in range(2)]
    assert limiter.in_flight("t1") == 0
    assert limiter.client_in_flight("t1", CLIENT) == 2
    # Its share (a quarter of 8) is used up: more from it are refused at once …
    assert refused(limiter, SHARED).status == 503
    # … while the tenant's other users get every one of its 8 slots.
    others = [admit(limiter, SHARED, f"203.0.113.{n}") for n in range(8)]
    assert limiter.in_flight("t1") == 8
    # A parked request whose body finally arrives finds the tenant full: a fast 503, its
    # tokens given back and its client slot freed.
    with pytest.raises(MatrixError) as caught:
        parked[0].take_tenant_slot()
    assert caught.value.status == 503
    assert limiter.client_in_flight("t1", CLIENT) == 1
    others[0].release()
    parked[1].take_tenant_slot()
    assert limiter.in_flight("t1") == 8
    parked[1].release()
    assert (limiter.in_flight("t1"), limiter.client_in_flight("t1", CLIENT)) == (7, 0)


def test_one_client_cannot_fill_the_tenants_slots_with_slow_requests() -> None:
    limiter = shared_limiter()
    admit(limiter, SHARED)
    admit(limiter, SHARED)
    assert refused(limiter, SHARED).status == 503
    assert limiter.in_flight("t1") == 2
    admit(limiter, SHARED, "203.0.113.7")


def test_one_client_has_its_own_share_of_the_tenants_rate() -> None:
    clock = FakeClock()
    limiter = shared_limiter(clock)
    route = replace(ROUTE, rate_burst=10, max_concurrent=100)
    for _ in range(5):  # half the tenant's burst
        admit(limiter, route, long_poll=True)
    error = refused(limiter, route, long_poll=True)
    assert (error.status, error.errcode) == (429, "M_LIMIT_EXCEEDED")
    assert error.extra == {"retry_after_ms": 250}  # its own rate: half of 8/s
    # The tenant's other clients still have the rest of the bucket.
    for n in range(5):
        admit(limiter, route, f"203.0.113.{n}", long_poll=True)
    assert refused(limiter, route, "203.0.113.9", long_poll=True).extra == {
        "retry_after_ms": 125  # the tenant's bucket is empty now: its rate, 8/s
    }
    clock.now += 0.25
    admit(limiter, route, long_poll=True)


def test_an_ipv6_client_is_its_64_not_each_address() -> None:
    assert (
        client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == ("2001:db8:1:2::/64")
    )
    assert client_key("198.51.100.1") == "198.51.100.1"
    limiter = shared_limiter()
    admit(limiter, SHARED, "2001:db8:1:2::1")
    admit(limiter, SHARED, "2001:db8:1:2::2")
    assert refused(limiter, SHARED, "2001:db8:1:2::3").status == 503
    admit(limiter, SHARED, "2001:db8:1:3::1")


def test_idle_clients_are_forgotten_without_losing_their_state() -> None:
    clock = FakeClock()
    limiter = shared_limiter(clock)
    route = replace(ROUTE, rate_burst=10, max_concurrent=100)
    busy = admit(limiter, route, "203.0.113.1")
    for n in range(1000):
        admit(limiter, route, f"10.0.{n // 256}.{n % 256}", long_poll=True)
        clock.now += 1
    assert len(limiter._clients) < 20  # swept as it went
    assert sum(len(limits.by_address) for limits in limiter._limits.values()) < 20  # by address
    assert limiter.client_in_flight("t1", "203.0.113.1") == 1  # in flight: kept
    busy.release()
