"""Request rate limits of the tenant API, per credential, in Redis: a credential over its
plan's (or, for operators, the settings') limit gets 429 problem+json with Retry-After and the
RateLimit-* headers before anything is done; other credentials are unaffected; the limit
recovers after RateLimit-Reset; every limited answer says where the caller stands."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Callable

import httpx
import pytest

from platform_core.db import task_session
from platform_core.models import ApiKey, IdempotentRequest
from tenant_api.main import create_app
from tenant_api.rate_limit import RateLimiter
from tests.helpers.api import (
    api_client,
    assert_problem,
    bearer,
    client_address,
    new_tenant,
    sign_in,
    slug,
)
from tests.helpers.environment import auth

# 30 per minute: one request every 2 s once the burst of 3 is spent.
SMALL = {"api_requests_per_minute": 30, "api_burst": 3}


async def tenant_on_plan(api: httpx.AsyncClient, limits: dict[str, int]) -> dict:
    code = f"rl{uuid.uuid4().hex[:8]}"
    plan = await api.post(
        "/v1/plans",
        json={"code": code, "name": "Rate limited", "currency": "EUR", "limits": limits},
    )
    assert plan.status_code == 201, plan.text
    assert plan.json()["limits"] == limits
    created = await api.post(
        "/v1/tenants", json={"slug": slug(), "display_name": "R", "plan": code}
    )
    assert created.status_code == 202, created.text
    return created.json()


async def new_key(api: httpx.AsyncClient, tenant_id: str | None, *scopes: str) -> str:
    body: dict[str, object] = {"name": "rl", "scopes": list(scopes or ["tenants:read"])}
    if tenant_id is not None:
        body["tenant_id"] = tenant_id
    created = await api.post("/v1/api-keys", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


def refusals_counted(metrics: httpx.Response, kind: str = "api_key") -> float:
    assert metrics.status_code == 200, metrics.text
    for line in metrics.text.splitlines():
        if line.startswith(f'c3_api_rate_limited_total{{principal="{kind}"}}'):
            return float(line.split()[-1])
    return 0.0


def limit_headers(response: httpx.Response) -> tuple[int, int, int]:
    return (
        int(response.headers["RateLimit-Limit"]),
        int(response.headers["RateLimit-Remaining"]),
        int(response.headers["RateLimit-Reset"]),
    )


async def spend(api: httpx.AsyncClient, path: str, key: str, count: int) -> list[httpx.Response]:
    return [await api.get(path, headers=bearer(key)) for _ in range(count)]


async def test_a_key_over_its_plans_limit_gets_429_and_others_are_unaffected(
    api: httpx.AsyncClient,
) -> None:
    limited = await tenant_on_plan(api, SMALL)
    other = await new_tenant(api)  # the default plan
    key = await new_key(api, limited["id"])
    second_key = await new_key(api, limited["id"])
    other_key = await new_key(api, other["id"])
    path = f"/v1/tenants/{limited['id']}"

    served = await spend(api, path, key, 3)
    assert [r.status_code for r in served] == [200, 200, 200]
    assert [limit_headers(r)[:2] for r in served] == [(3, 2), (3, 1), (3, 0)]
    assert served[0].headers["RateLimit-Policy"] == "30;w=60;burst=3"

    refused = await api.get(path, headers=bearer(key))
    body = assert_problem(refused, 429, "30 per minute", "retry after")
    assert body["instance"] == path
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    limit, remaining, reset = limit_headers(refused)
    assert (limit, remaining) == (3, 0) and 4 <= reset <= 6

    # Per credential: the tenant's other key, and another tenant's key, are served.
    assert (await api.get(path, headers=bearer(second_key))).status_code == 200
    elsewhere = await api.get(f"/v1/tenants/{other['id']}", headers=bearer(other_key))
    assert elsewhere.status_code == 200
    assert limit_headers(elsewhere)[:2] == (600, 599)

    # After RateLimit-Reset (counted from the refusal) the whole burst is there again.
    await asyncio.sleep(reset)
    burst = await spend(api, path, key, 3)
    assert [r.status_code for r in burst] == [200, 200, 200]
    assert_problem(await api.get(path, headers=bearer(key)), 429)


async def test_a_refused_request_does_nothing(api: httpx.AsyncClient) -> None:
    """Refused before any work: no key created, no Idempotency-Key claimed (the same key works
    once the limit allows), the key's last use not recorded."""
    tenant = await tenant_on_plan(api, {"api_requests_per_minute": 30, "api_burst": 1})
    key = await new_key(api, tenant["id"], "keys:write", "tenants:read")
    served = await api.get("/v1/api-keys", headers=bearer(key))
    assert served.status_code == 200
    key_id = key[4:16]
    with task_session() as session:
        used_before = session.query(ApiKey).filter_by(key_id=key_id).one().last_used_at
        keys_before = session.query(ApiKey).count()
    # Idempotency keys are claimed per principal; nothing for this key has been claimed.
    idempotency = f"rl-{uuid.uuid4().hex}"
    create = {"name": "made while limited", "scopes": ["tenants:read"]}
    headers = {**bearer(key), "Idempotency-Key": idempotency}

    refused = await api.post("/v1/api-keys", json=create, headers=headers)
    assert_problem(refused, 429, "this credential")
    with task_session() as session:
        assert session.query(ApiKey).count() == keys_before
        assert session.query(ApiKey).filter_by(key_id=key_id).one().last_used_at == used_before
        assert session.query(IdempotentRequest).filter_by(key=idempotency).count() == 0

    await asyncio.sleep(int(refused.headers["Retry-After"]))
    created = await api.post("/v1/api-keys", json=create, headers=headers)
    assert created.status_code == 201, created.text
    assert created.headers.get("Idempotent-Replayed") is None


async def test_operator_credentials_take_the_limit_from_settings(
    api: httpx.AsyncClient, tuned_settings: Callable[..., None]
) -> None:
    org_key = await new_key(api, None, "tenants:read")
    tenant = await tenant_on_plan(api, SMALL)  # a tenant plan's limit binds no operator
    tuned_settings(C3_API_OPERATOR_RATE_PER_MINUTE="2", C3_API_OPERATOR_RATE_BURST="4")

    served = await spend(api, f"/v1/tenants/{tenant['id']}", org_key, 4)
    assert [r.status_code for r in served] == [200] * 4
    assert [limit_headers(r)[:2] for r in served] == [(4, 3), (4, 2), (4, 1), (4, 0)]
    assert served[0].headers["RateLimit-Policy"] == "2;w=60;burst=4"
    before = refusals_counted(await api.get("/metrics", headers=auth()))
    refused = await api.get("/v1/tenants", headers=bearer(org_key))
    assert_problem(refused, 429, "2 per minute")
    assert 1 <= int(refused.headers["Retry-After"]) <= 30
    # Operators see refusals in /metrics (by kind of caller).
    assert refusals_counted(await api.get("/metrics", headers=auth())) == before + 1


async def test_headers_on_every_v1_answer_and_none_on_health_or_metrics(
    api: httpx.AsyncClient,
) -> None:
    listed = await api.get("/v1/tenants")
    assert listed.status_code == 200
    limit, remaining, _ = limit_headers(listed)
    assert limit >= 1 and 0 <= remaining < limit
    missing = await api.get(f"/v1/tenants/{uuid.uuid4()}")
    assert missing.status_code == 404 and "RateLimit-Remaining" in missing.headers

    health = await api.get("/healthz")
    assert health.status_code == 200 and "RateLimit-Limit" not in health.headers
    metrics = await api.get("/metrics")
    assert "RateLimit-Limit" not in metrics.headers


async def test_requests_without_a_valid_credential_are_limited_per_address(
    api: httpx.AsyncClient, tuned_settings: Callable[..., None]
) -> None:
    tuned_settings(C3_API_ANONYMOUS_RATE_PER_MINUTE="1", C3_API_ANONYMOUS_RATE_BURST="2")
    async with api_client(create_app(), client_address()) as anonymous:
        first = await sign_in(anonymous, "nobody@example.com", "wrong password")
        assert first.status_code == 401 and limit_headers(first)[:2] == (2, 1)
        assert (await anonymous.get("/v1/tenants")).status_code == 401
        refused = await sign_in(anonymous, "nobody@example.com", "wrong password")
        assert_problem(refused, 429, "without a valid credential")
    # Another address, and any valid credential, are unaffected.
    assert (await api.get("/v1/tenants")).status_code == 200


async def test_redis_away_fails_open_with_a_log_line(
    api: httpx.AsyncClient,
    tuned_settings: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without Redis the limit is not enforced (and says so in the log); authentication,
    which needs Redis for its failure budgets, answers 503 — never a 429 or a 500."""
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    tuned_settings(C3_REDIS_URL=dead)
    RateLimiter._warned_at = 0.0
    with caplog.at_level(logging.WARNING, logger="tenant_api.rate_limit"):
        answer = await api.get("/v1/tenants")
    body = assert_problem(answer, 503, "unavailable")
    assert "RateLimit-Limit" not in answer.headers and answer.headers["Retry-After"]
    assert body["status"] == 503
    assert any("failing open" in r.getMessage() for r in caplog.records)
