"""/v1/tenants and /v1/operations as an integrator sees them (no worker running here)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.helpers.api import assert_problem, slug


async def test_create_returns_202_with_the_tenant_and_its_operation(api: httpx.AsyncClient) -> None:
    name = slug()
    response = await api.post("/v1/tenants", json={"slug": name, "display_name": "Acme Corp"})
    assert response.status_code == 202, response.text
    tenant = response.json()
    assert tenant["slug"] == name
    assert tenant["server_name"] == f"{name}.c3.test"
    assert tenant["status"] == "provisioning"
    assert tenant["plan"] == "standard"
    assert tenant["homeserver_path_url"].endswith(f"/t/{name}")
    operation_url = tenant["operation"]["url"]
    assert response.headers["location"] == operation_url

    operation = (await api.get(operation_url)).json()
    assert operation["tenant_id"] == tenant["id"]
    assert operation["kind"] == "provision"
    assert operation["state"] in ("pending", "running", "succeeded")

    again = await api.get(f"/v1/tenants/{tenant['id']}")
    assert again.status_code == 200 and again.json()["slug"] == name


async def test_duplicate_slug_is_a_conflict(api: httpx.AsyncClient) -> None:
    name = slug()
    assert (
        await api.post("/v1/tenants", json={"slug": name, "display_name": "A"})
    ).status_code == 202
    response = await api.post("/v1/tenants", json={"slug": name, "display_name": "B"})
    assert_problem(response, 409, name)


@pytest.mark.parametrize(
    ("bad_slug", "reason"),
    [
        ("ab", "DNS label"),
        ("Acme", "DNS label"),
        ("-acme", "DNS label"),
        ("acme-", "DNS label"),
        ("ac_me", "DNS label"),
        ("a" * 64, "DNS label"),
        ("xn--acme", "IDNA"),
        ("admin", "reserved"),
        ("www", "reserved"),
    ],
)
async def test_slugs_must_be_dns_labels(api: httpx.AsyncClient, bad_slug: str, reason: str) -> None:
    response = await api.post("/v1/tenants", json={"slug": bad_slug, "display_name": "X"})
    body = assert_problem(response, 422, "slug", reason)
    assert body["errors"][0]["field"] == "slug"


async def test_unknown_and_privileged_fields_are_refused(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/v1/tenants", json={"slug": slug(), "display_name": "X", "status": "active"}
    )
    assert_problem(response, 422, "status")


async def test_malformed_json_is_a_clear_422(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/v1/tenants", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(response, 422)


async def test_unknown_plan_is_refused(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/v1/tenants", json={"slug": slug(), "display_name": "X", "plan": "platinum"}
    )
    assert_problem(response, 422, "platinum")


async def test_writes_need_the_operator_token(api: httpx.AsyncClient) -> None:
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic x"},
    ):
        response = await api.post(
            "/v1/tenants", json={"slug": slug(), "display_name": "X"}, headers=headers
        )
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
    listing = await api.get("/v1/tenants", headers={"Authorization": ""})
    assert_problem(listing, 401)


async def test_listing_pages_with_a_cursor(api: httpx.AsyncClient) -> None:
    created = set()
    for _ in range(5):
        response = await api.post("/v1/tenants", json={"slug": slug(), "display_name": "P"})
        created.add(response.json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.get("/v1/tenants", params=params)).json()
        assert len(page["items"]) <= 2
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "a tenant appeared on two pages"
    assert created <= set(seen)


async def test_bad_cursor_and_limit_are_422(api: httpx.AsyncClient) -> None:
    assert_problem(await api.get("/v1/tenants", params={"cursor": "garbage"}), 422, "cursor")
    assert_problem(await api.get("/v1/tenants", params={"limit": 0}), 422, "limit")


async def test_unknown_ids_are_404_problems(api: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    assert_problem(await api.get(f"/v1/tenants/{missing}"), 404, str(missing))
    assert_problem(await api.get(f"/v1/operations/{missing}"), 404, str(missing))
    assert_problem(await api.delete(f"/v1/tenants/{missing}"), 404)
    assert_problem(await api.get(f"/v1/tenants/{missing}/usage"), 404)
    assert_problem(await api.get("/v1/tenants/not-a-uuid"), 422)


async def test_users_cannot_be_created_before_the_homeserver_is_active(
    api: httpx.AsyncClient,
) -> None:
    tenant = (await api.post("/v1/tenants", json={"slug": slug(), "display_name": "X"})).json()
    response = await api.post(
        f"/v1/tenants/{tenant['id']}/users", json={"username": "alice", "password": "long-enough"}
    )
    assert_problem(response, 409, "provisioning")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "Alice", "password": "long-enough"}, "username"),
        ({"username": "al ice", "password": "long-enough"}, "username"),
        ({"username": "c3-admin", "password": "long-enough"}, "reserved"),
        ({"username": "alice", "password": "short"}, "password"),
    ],
)
async def test_user_input_is_validated(api: httpx.AsyncClient, body: dict, field: str) -> None:
    tenant = (await api.post("/v1/tenants", json={"slug": slug(), "display_name": "X"})).json()
    response = await api.post(f"/v1/tenants/{tenant['id']}/users", json=body)
    problem = assert_problem(response, 422, field)
    assert "long-enough" not in response.text and "short" not in str(problem.get("errors"))


async def test_usage_of_a_new_tenant_is_all_zero(api: httpx.AsyncClient) -> None:
    tenant = (await api.post("/v1/tenants", json={"slug": slug(), "display_name": "X"})).json()
    usage = (await api.get(f"/v1/tenants/{tenant['id']}/usage")).json()
    assert usage["totals"] == {
        "api_requests": 0,
        "bytes_in": 0,
        "bytes_out": 0,
        "messages": 0,
        "media_bytes": 0,
        "media_egress_bytes": 0,
        "calls": 0,
        "active_users": 0,
    }
    naive = await api.get(
        f"/v1/tenants/{tenant['id']}/usage", params={"from": "2026-01-01T00:00:00"}
    )
    assert_problem(naive, 422, "timezone")


async def test_delete_is_accepted_once_and_repeats_the_same_operation(
    api: httpx.AsyncClient,
) -> None:
    tenant = (await api.post("/v1/tenants", json={"slug": slug(), "display_name": "X"})).json()
    first = await api.delete(f"/v1/tenants/{tenant['id']}")
    assert first.status_code == 202 and first.json()["status"] == "deleting"
    second = await api.delete(f"/v1/tenants/{tenant['id']}")
    assert second.status_code == 202
    assert second.json()["operation"]["id"] == first.json()["operation"]["id"]


async def test_healthz_and_openapi_are_public(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz", headers={"Authorization": ""})).json() == {"status": "ok"}
    schema = (await api.get("/openapi.json", headers={"Authorization": ""})).json()
    assert "/v1/tenants" in schema["paths"]


async def test_a_tenant_can_bring_its_own_domain_once(api: httpx.AsyncClient) -> None:
    domain = f"chat.{uuid.uuid4().hex[:8]}.example.com"
    created = await api.post(
        "/v1/tenants", json={"slug": slug(), "display_name": "Own", "server_name": domain.upper()}
    )
    assert created.status_code == 202, created.text
    tenant = created.json()
    assert tenant["server_name"] == domain
    assert tenant["homeserver_url"].startswith(f"http://{domain}")
    taken = await api.post(
        "/v1/tenants", json={"slug": slug(), "display_name": "Thief", "server_name": domain}
    )
    assert_problem(taken, 409, domain)
    for bad in ("localhost", "acme.com:8448", "10.0.0.1", "-bad.example.com", "a..b.com"):
        response = await api.post(
            "/v1/tenants", json={"slug": slug(), "display_name": "X", "server_name": bad}
        )
        assert_problem(response, 422, "server_name")
    squat = await api.post(
        "/v1/tenants",
        json={"slug": slug(), "display_name": "X", "server_name": "someone-else.c3.test"},
    )
    assert_problem(squat, 422, "belong to their slug")
    immutable = await api.patch(f"/v1/tenants/{tenant['id']}", json={"server_name": "x.com"})
    assert_problem(immutable, 422, "server_name")
