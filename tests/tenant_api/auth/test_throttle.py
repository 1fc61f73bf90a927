"""Failure budgets on credentials: a guessed password, API key, operator token or access
token costs budget per account and per client address (kept in Redis, shared by replicas);
a spent budget answers 429 with Retry-After before anything is verified."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from platform_core.auth.passwords import hashing_limiter
from platform_core.settings import get_settings
from tenant_api.main import create_app
from tests.helpers.api import (
    api_client,
    assert_problem,
    bearer,
    client_address,
    email,
    new_tenant,
    new_tenant_admin,
    sign_in,
)
from tests.helpers.environment import OPERATOR_TOKEN


@pytest.fixture
def small_budgets(tuned_settings: Callable[..., None]) -> None:
    tuned_settings(
        C3_SIGNIN_ACCOUNT_MAX_FAILURES="3",
        C3_SIGNIN_ACCOUNT_WINDOW_S="600",
        C3_AUTH_ADDRESS_MAX_FAILURES="6",
        C3_AUTH_ADDRESS_WINDOW_S="300",
    )


async def new_admin(api: httpx.AsyncClient) -> dict:
    """A tenant admin of a new tenant."""
    return await new_tenant_admin(api, (await new_tenant(api))["id"])


def assert_throttled(response: httpx.Response, window_s: int, why: str) -> None:
    assert_problem(response, 429, why)
    assert 0 < int(response.headers["Retry-After"]) <= window_s
    assert "access_token" not in response.text


async def test_wrong_passwords_lock_the_account_even_for_the_right_password(
    api: httpx.AsyncClient, small_budgets: None
) -> None:
    admin = await new_admin(api)
    for _ in range(3):
        assert (await sign_in(api, admin["email"], "wrong password!")).status_code == 401
    locked = await sign_in(api, admin["email"])  # the right password, too late
    assert_throttled(locked, 600, "too many failed sign-ins for this account")
    # The lock is the account's, wherever the next attempt comes from.
    async with api_client(api._transport.app) as elsewhere:  # type: ignore[attr-defined]
        assert_throttled(await sign_in(elsewhere, admin["email"]), 600, "this account")
    # One audit event per lockout, not one per refused attempt.
    await sign_in(api, admin["email"], "still wrong pw")
    events = (await api.get("/v1/audit-events", params={"tenant_id": admin["tenant_id"]})).json()
    throttled = [e for e in events["items"] if e["action"] == "account.throttle"]
    assert len(throttled) == 1
    assert throttled[0]["target_id"] == admin["id"]
    assert throttled[0]["actor"].startswith("address:")
    # Another account signs in from the same address as usual.
    other = await new_admin(api)
    assert (await sign_in(api, other["email"])).status_code == 200


async def test_unknown_emails_are_throttled_like_real_accounts(
    api: httpx.AsyncClient, small_budgets: None
) -> None:
    nobody = email()
    for _ in range(3):
        assert (await sign_in(api, nobody, "wrong password!")).status_code == 401
    assert_throttled(await sign_in(api, nobody), 600, "this account")  # no enumeration


async def test_a_successful_sign_in_does_not_refill_the_address_budget(
    api: httpx.AsyncClient, small_budgets: None
) -> None:
    mine = await new_admin(api)
    for victim in (email(), email()):  # 4 failures on 2 accounts: neither account is locked
        for _ in range(2):
            assert (await sign_in(api, victim, "wrong password!")).status_code == 401
    assert (await sign_in(api, mine["email"])).status_code == 200
    for _ in range(2):
        assert (await sign_in(api, email(), "wrong password!")).status_code == 401
    # Six failures from this address: its budget is spent, for every account.
    assert_throttled(await sign_in(api, mine["email"]), 300, "from your address")
    async with api_client(api._transport.app) as elsewhere:  # type: ignore[attr-defined]
        assert (await sign_in(elsewhere, mine["email"])).status_code == 200


async def test_guessed_bearer_credentials_spend_the_address_budget(
    api: httpx.AsyncClient, small_budgets: None
) -> None:
    guesses = [
        "c3k_" + "a" * 50,  # not even a well-formed key
        OPERATOR_TOKEN[:-1] + "x",  # almost the operator token
        "eyJhbGciOiJFUzI1NiJ9.e30.c2ln",  # a made-up JWT
    ]
    async with api_client(create_app(), client_address()) as attacker:
        for guess in guesses * 2:
            refused = await attacker.get("/v1/tenants", headers=bearer(guess))
            assert_problem(refused, 401, "")
        # Budget spent: even the real operator token is refused from this address now.
        throttled = await attacker.get("/v1/tenants", headers=bearer(OPERATOR_TOKEN))
        assert_throttled(throttled, 300, "from your address")
        refresh = await attacker.post(
            "/v1/auth/token",
            data={"grant_type": "refresh_token", "refresh_token": "c3r_guess"},
        )
        assert_throttled(refresh, 300, "from your address")
    assert (await api.get("/v1/tenants")).status_code == 200  # other addresses: untouched


async def test_bad_refresh_tokens_spend_the_address_budget(
    api: httpx.AsyncClient, small_budgets: None
) -> None:
    for _ in range(6):
        refused = await api.post(
            "/v1/auth/token",
            data={"grant_type": "refresh_token", "refresh_token": "c3r_guessed"},
            headers={"Authorization": ""},
        )
        assert refused.status_code == 401
    assert_throttled(await api.get("/v1/tenants"), 300, "from your address")


async def test_a_throttled_sign_in_never_hashes_a_password(
    api: httpx.AsyncClient, small_budgets: None
) -> None:
    nobody = email()
    for _ in range(3):
        await sign_in(api, nobody, "wrong password!")
    limiter = hashing_limiter(get_settings())
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for holder in holders:  # every hashing slot taken: a request that hashes would wait
        await limiter.acquire_on_behalf_of(holder)
    try:
        assert_throttled(await sign_in(api, nobody), 600, "this account")
    finally:
        for holder in holders:
            limiter.release_on_behalf_of(holder)
