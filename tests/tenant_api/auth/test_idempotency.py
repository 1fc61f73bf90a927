"""Idempotency-Key on POST: the same request once, replayed; a different one refused."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import func, select

from platform_core.db import task_session
from platform_core.models import IdempotentRequest, Tenant
from tests.helpers.api import assert_problem, slug


def tenants_named(name: str) -> int:
    with task_session() as session:
        return int(
            session.scalar(select(func.count()).select_from(Tenant).where(Tenant.slug == name))
        )


async def test_a_retried_post_runs_once_and_gets_the_same_answer(api: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"slug": slug(), "display_name": "Once"}
    first = await api.post("/v1/tenants", json=body, headers=key)
    second = await api.post("/v1/tenants", json=body, headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert second.headers["location"] == first.headers["location"]
    assert second.headers.get("idempotent-replayed") == "true"
    assert tenants_named(body["slug"]) == 1


async def test_the_same_key_with_another_body_is_refused(api: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await api.post("/v1/tenants", json={"slug": slug(), "display_name": "A"}, headers=key)
    assert first.status_code == 202
    other = {"slug": slug(), "display_name": "B"}
    refused = await api.post("/v1/tenants", json=other, headers=key)
    assert_problem(refused, 422, "different request")
    assert tenants_named(other["slug"]) == 0


async def test_errors_are_replayed_too_but_keys_are_per_principal(
    api: httpx.AsyncClient,
) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    bad = {"slug": "NO", "display_name": "x"}
    first = await api.post("/v1/tenants", json=bad, headers=key)
    again = await api.post("/v1/tenants", json=bad, headers=key)
    assert first.status_code == again.status_code == 422
    assert first.json() == again.json()
    malformed = await api.post("/v1/tenants", json=bad, headers={"Idempotency-Key": "has space"})
    assert_problem(malformed, 422, "Idempotency-Key")


async def test_a_stored_answer_keeps_no_credential_in_clear(api: httpx.AsyncClient) -> None:
    """A new API key is shown once; replaying its answer must not mean keeping it readable in
    the database for a day."""
    key = uuid.uuid4().hex
    body = {"name": "replayed", "scopes": ["tenants:read"]}
    first = await api.post("/v1/api-keys", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    secret = first.json()["key"]
    again = await api.post("/v1/api-keys", json=body, headers={"Idempotency-Key": key})
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["key"] == secret
    with task_session() as session:
        stored = session.scalars(
            select(IdempotentRequest.body).where(IdempotentRequest.key == key)
        ).one()
    assert stored and secret not in stored and "c3k_" not in stored
