"""Lifecycle requests over REST (no worker here): suspend, resume, plan change → reconfigure,
retrying a failed operation."""

from __future__ import annotations

import uuid

import httpx
import pytest

from platform_core.db import task_session
from platform_core.models import Operation, OperationState
from platform_core.settings import get_settings
from tests.helpers.api import active_tenant, assert_problem, plan_with_upload_limit, slug


async def test_suspend_and_resume_are_operations_and_repeatable(api: httpx.AsyncClient) -> None:
    tenant = await active_tenant(api)
    first = await api.post(f"/v1/tenants/{tenant['id']}/suspend")
    assert first.status_code == 202, first.text
    operation = first.json()["operation"]
    assert (await api.get(operation["url"])).json()["kind"] == "suspend"
    again = await api.post(f"/v1/tenants/{tenant['id']}/suspend")
    assert again.json()["operation"]["id"] == operation["id"]  # the one under way
    # Not suspended yet (no worker ran): resuming is refused with the reason.
    assert_problem(await api.post(f"/v1/tenants/{tenant['id']}/resume"), 409, "only a suspended")


async def test_a_provisioning_tenant_cannot_be_suspended(api: httpx.AsyncClient) -> None:
    tenant = (await api.post("/v1/tenants", json={"slug": slug(), "display_name": "P"})).json()
    assert_problem(
        await api.post(f"/v1/tenants/{tenant['id']}/suspend"), 409, "only an active tenant"
    )


async def test_a_plan_change_starts_a_reconfigure_operation(api: httpx.AsyncClient) -> None:
    tenant = await active_tenant(api)
    code = await plan_with_upload_limit(api, 200 * 1024 * 1024)
    patched = await api.patch(f"/v1/tenants/{tenant['id']}", json={"plan": code})
    assert patched.status_code == 200, patched.text
    operation = (await api.get(patched.headers["location"])).json()
    assert (operation["kind"], operation["state"]) == ("reconfigure", "pending")
    renamed = await api.patch(f"/v1/tenants/{tenant['id']}", json={"display_name": "N"})
    assert "location" not in renamed.headers  # nothing for the homeserver to change


async def test_only_a_failed_operation_can_be_retried(api: httpx.AsyncClient) -> None:
    tenant = (await api.post("/v1/tenants", json={"slug": slug(), "display_name": "R"})).json()
    operation_id = tenant["operation"]["id"]
    assert_problem(await api.post(f"/v1/operations/{operation_id}/retry"), 409, "only a failed")
    with task_session() as session:
        operation = session.get(Operation, uuid.UUID(operation_id))
        assert operation is not None
        operation.state, operation.attempts = OperationState.FAILED, 5
        operation.last_error = "gave up after 5 attempts: boom"
    retried = await api.post(f"/v1/operations/{operation_id}/retry")
    assert retried.status_code == 200, retried.text
    assert (retried.json()["state"], retried.json()["attempts"]) == ("pending", 0)
    assert retried.json()["last_error"] == "gave up after 5 attempts: boom"  # kept for context
    assert_problem(await api.post(f"/v1/operations/{uuid.uuid4()}/retry"), 404, "not found")


async def test_urls_handed_out_start_with_the_public_api_url(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a TLS load balancer the API sees http://; clients must still be sent https://."""
    monkeypatch.setenv("C3_API_PUBLIC_URL", "https://api.c3.example/")
    get_settings.cache_clear()
    try:
        created = await api.post("/v1/tenants", json={"slug": slug(), "display_name": "TLS"})
        assert created.status_code == 202, created.text
        operation_id = created.json()["operation"]["id"]
        expected = f"https://api.c3.example/v1/operations/{operation_id}"
        assert created.headers["location"] == expected
        assert created.json()["operation"]["url"] == expected
    finally:
        monkeypatch.delenv("C3_API_PUBLIC_URL")
        get_settings.cache_clear()
