"""The contexts API's answers that need no homeserver: validation (problem+json with a useful
detail), tenant scoping, listing and filters. The homeserver side is in
tests/test_contexts_end_to_end.py."""

from __future__ import annotations

import uuid

import httpx

from platform_core.db import task_session
from platform_core.models import Context, ContextState
from tests.helpers.factories import make_tenant


def _context(tenant_id: uuid.UUID, ref: str, status: ContextState) -> None:
    with task_session() as session:
        session.add(
            Context(
                tenant_id=tenant_id,
                ref=ref,
                title=ref.title(),
                room_id=f"!{uuid.uuid4().hex}:unit.test",
                status=status,
            )
        )


async def test_a_bad_reference_is_refused_with_the_rule(api: httpx.AsyncClient) -> None:
    tenant_id = make_tenant()
    response = await api.put(f"/v1/tenants/{tenant_id}/contexts/case%204711", json={"title": "x"})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "A-Z, a-z, 0-9" in response.json()["detail"]


async def test_a_participant_is_either_a_tenant_user_or_an_external(
    api: httpx.AsyncClient,
) -> None:
    tenant_id = make_tenant()
    _context(tenant_id, "case-1", ContextState.OPEN)
    url = f"/v1/tenants/{tenant_id}/contexts/case-1/participants"
    both = await api.post(url, json={"user": "alice", "display_name": "Pat"})
    assert both.status_code == 422
    assert "either user" in both.json()["detail"]
    too_long = await api.post(url, json={"display_name": "Pat", "ttl_s": 10**9})
    assert too_long.status_code == 422
    assert "ttl_s: at most" in too_long.json()["detail"]
    platform_user = await api.post(url, json={"user": "c3-admin"})
    assert platform_user.status_code == 422
    assert "not a tenant user" in platform_user.json()["detail"]
    foreign = await api.post(url, json={"user": "@alice:elsewhere.example"})
    assert foreign.status_code == 422


async def test_a_closed_context_takes_no_participants_or_messages(api: httpx.AsyncClient) -> None:
    tenant_id = make_tenant()
    _context(tenant_id, "case-2", ContextState.CLOSED)
    base = f"/v1/tenants/{tenant_id}/contexts/case-2"
    added = await api.post(f"{base}/participants", json={"display_name": "Pat"})
    assert added.status_code == 409 and "closed" in added.json()["detail"]
    posted = await api.post(f"{base}/messages", json={"body": "hello"})
    assert posted.status_code == 409 and "read-only" in posted.json()["detail"]


async def test_list_filters_by_ref_and_status_and_pages(api: httpx.AsyncClient) -> None:
    tenant_id = make_tenant()
    for n in range(3):
        _context(tenant_id, f"case-{n}", ContextState.OPEN)
    _context(tenant_id, "case-closed", ContextState.CLOSED)
    _context(make_tenant(), "case-0", ContextState.OPEN)  # another tenant's: never listed
    url = f"/v1/tenants/{tenant_id}/contexts"
    first = (await api.get(url, params={"limit": 2, "status": "open"})).json()
    second = (
        await api.get(url, params={"limit": 2, "status": "open", "cursor": first["next_cursor"]})
    ).json()
    refs = [c["ref"] for c in first["items"] + second["items"]]
    assert sorted(refs) == ["case-0", "case-1", "case-2"]
    assert second["next_cursor"] is None
    by_ref = (await api.get(url, params={"ref": "case-closed"})).json()["items"]
    assert [(c["ref"], c["status"]) for c in by_ref] == [("case-closed", "closed")]
    missing = await api.get(f"{url}/case-404")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "context case-404 not found"


async def test_a_tenant_without_a_ready_homeserver_gets_a_conflict(api: httpx.AsyncClient) -> None:
    tenant_id = make_tenant()
    response = await api.put(f"/v1/tenants/{tenant_id}/contexts/case-9", json={"title": "t"})
    assert response.status_code == 409
    assert "homeserver" in response.json()["detail"] or "tenant is" in response.json()["detail"]
