"""The portal in-process (the tenant API app, real PostgreSQL and Redis): sign-in and its cookie,
CSRF refusal, other tenants' pages, session expiry and revocation, and the API's problem detail
shown beside the field it names."""

from __future__ import annotations

import hashlib
import html
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis

from platform_core.db import task_session
from platform_core.models import Tenant
from platform_core.settings import get_settings
from tenant_api.invoices.tasks import finalize_one
from tenant_api.main import create_app
from tenant_api.portal.sessions import SessionStore
from tenant_api.usage.repository import UsageBatchRepository
from tests.helpers.api import (
    PASSWORD,
    active_tenant,
    api_client,
    bearer,
    client_address,
    email,
    new_tenant_admin,
)

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text[:2000]
    return found.group(1)


async def submit(
    client: httpx.AsyncClient,
    url: str,
    form_id: str,
    fields: dict[str, str | list[str]] | None = None,
    *,
    page: httpx.Response | None = None,
) -> httpx.Response:
    """Send a portal form as its page does: with that page's CSRF token (``page``, else the
    page at ``url`` fetched now) and the form's id."""
    page = page or await client.get(url)
    return await client.post(
        url, data={"csrf_token": csrf_of(page), "form_id": form_id, **(fields or {})}
    )


def text_of(page: httpx.Response) -> str:
    """The page's text as a person reads it (tags dropped, whitespace collapsed)."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page.text)))


@pytest.fixture
def app(platform_env: dict[str, str]) -> object:
    return create_app()


@pytest.fixture
async def portal(app: object) -> AsyncIterator[httpx.AsyncClient]:
    """A cookie-keeping client of the portal that follows nothing by itself."""
    transport = httpx.ASGITransport(app=app, client=(client_address(), 40000))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


async def sign_in(
    client: httpx.AsyncClient, user: str, password: str = PASSWORD, next_: str = "/portal/"
) -> httpx.Response:
    form = await client.get("/portal/sign-in", params={"next": next_})
    assert form.status_code == 200, form.text
    fields = {"email": user, "password": password, "next": next_}
    return await submit(client, "/portal/sign-in", "sign-in", fields, page=form)


async def admin_of_new_tenant(api: httpx.AsyncClient) -> tuple[dict, dict]:
    tenant = await active_tenant(api)
    return tenant, await new_tenant_admin(api, tenant["id"])


async def signed_in_admin(api: httpx.AsyncClient, portal: httpx.AsyncClient) -> tuple[dict, dict]:
    """A new active tenant and its admin, signed in to ``portal``."""
    tenant, admin = await admin_of_new_tenant(api)
    assert (await sign_in(portal, admin["email"])).status_code == 303
    return tenant, admin


async def test_a_tenant_admin_signs_in_to_their_overview_with_a_safe_cookie(
    api: httpx.AsyncClient, portal: httpx.AsyncClient
) -> None:
    tenant, admin = await admin_of_new_tenant(api)
    signed_in = await sign_in(portal, admin["email"])
    assert signed_in.status_code == 303
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/portal" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over TLS see the next test
    home = await portal.get(signed_in.headers["location"])
    assert home.headers["location"] == f"/portal/tenants/{tenant['id']}"
    overview = await portal.get(home.headers["location"])
    assert overview.status_code == 200
    page = text_of(overview)
    assert tenant["server_name"] in page and "Connect a client" in page
    assert "frame-ancestors 'none'" in overview.headers["content-security-policy"]
    # The portal holds a random id only: neither token is in any cookie or page.
    session_id = portal.cookies["c3_portal"]
    assert len(session_id) >= 40 and "eyJ" not in overview.text


async def test_the_cookie_is_secure_over_tls(api: httpx.AsyncClient, app: object) -> None:
    _, admin = await admin_of_new_tenant(api)
    transport = httpx.ASGITransport(app=app, client=(client_address(), 40000))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="https://api") as tls:
        signed_in = await sign_in(tls, admin["email"])
    assert signed_in.status_code == 303
    assert "Secure" in signed_in.headers["set-cookie"]


async def test_a_wrong_password_is_shown_on_the_sign_in_form(
    api: httpx.AsyncClient, portal: httpx.AsyncClient
) -> None:
    _, admin = await admin_of_new_tenant(api)
    refused = await sign_in(portal, admin["email"], "not the password at all")
    assert refused.status_code == 303
    page = await portal.get(refused.headers["location"])
    assert "invalid credentials" in text_of(page)
    assert "c3_portal" in portal.cookies  # the form still works: sign in with the right one
    assert (await sign_in(portal, admin["email"])).headers["location"] == "/portal/"


async def test_a_form_without_or_with_a_wrong_csrf_token_is_refused(
    api: httpx.AsyncClient, portal: httpx.AsyncClient
) -> None:
    tenant, _ = await signed_in_admin(api, portal)
    keys_url = f"/portal/tenants/{tenant['id']}/api-keys"
    form = {"form_id": "create-key", "name": "crm", "scopes": "usage:read"}
    without = await portal.post(keys_url, data=form)
    wrong = await portal.post(keys_url, data={**form, "csrf_token": "x" * 43})
    for refused in (without, wrong):
        assert refused.status_code == 403
        assert "security token (CSRF)" in text_of(refused)
    listed = await api.get("/v1/api-keys")
    assert not [k for k in listed.json()["items"] if k["tenant_id"] == tenant["id"]]
    # Another portal's valid token does not help either (bound to the session).
    transport = httpx.ASGITransport(app=portal._transport.app, client=(client_address(), 1))  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as other:
        other_token = csrf_of(await other.get("/portal/sign-in"))
    crossed = await portal.post(keys_url, data={**form, "csrf_token": other_token})
    assert crossed.status_code == 403


async def test_another_tenants_pages_and_operator_pages_are_404_for_a_tenant_admin(
    api: httpx.AsyncClient, portal: httpx.AsyncClient
) -> None:
    _, admin = await admin_of_new_tenant(api)
    other = await active_tenant(api)
    await sign_in(portal, admin["email"])
    for path in ("", "/usage", "/invoices", "/api-keys", "/settings", "/audit", "/users"):
        page = await portal.get(f"/portal/tenants/{other['id']}{path}")
        assert page.status_code == 404, (path, page.text[:300])
        assert other["server_name"] not in page.text
    for path in ("/portal/fleet", "/portal/operations/failed", "/portal/plans"):
        assert (await portal.get(path)).status_code == 404
    assert (await portal.get(f"/portal/tenants/{uuid.uuid4()}")).status_code == 404
    assert (await portal.get("/portal/tenants/not-an-id/usage")).status_code == 404


async def test_an_expired_session_goes_to_sign_in_and_back_to_the_page(
    api: httpx.AsyncClient, portal: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    tenant, admin = await signed_in_admin(api, portal)
    usage = f"/portal/tenants/{tenant['id']}/usage"
    assert (await portal.get(usage)).status_code == 200
    # What the idle timeout does in Redis: the record is gone.
    digest = hashlib.sha256(portal.cookies["c3_portal"].encode()).hexdigest()
    assert redis_client.delete(f"{get_settings().redis_namespace}:portal:session:{digest}") == 1

    bounced = await portal.get(usage)
    assert bounced.status_code == 303
    assert bounced.headers["location"] == f"/portal/sign-in?next={usage}&ended=1"
    form = await portal.get(bounced.headers["location"])
    assert "Your session has ended" in text_of(form)
    again = await sign_in(portal, admin["email"], next_=usage)
    assert again.headers["location"] == usage
    assert (await portal.get(usage)).status_code == 200


async def test_a_password_reset_ends_the_portal_session_at_once(
    api: httpx.AsyncClient, portal: httpx.AsyncClient
) -> None:
    tenant, admin = await signed_in_admin(api, portal)
    overview = f"/portal/tenants/{tenant['id']}"
    assert (await portal.get(overview)).status_code == 200
    reset = await api.post(
        f"/v1/accounts/{admin['id']}/reset-password", json={"password": "a new long password"}
    )
    assert reset.status_code == 200, reset.text
    bounced = await portal.get(overview)
    assert bounced.status_code == 303 and bounced.headers["location"].startswith(
        "/portal/sign-in?next="
    )


async def test_sign_out_ends_the_session(api: httpx.AsyncClient, portal: httpx.AsyncClient) -> None:
    tenant, _ = await signed_in_admin(api, portal)
    overview = await portal.get(f"/portal/tenants/{tenant['id']}")
    old_cookie = portal.cookies["c3_portal"]
    out = await portal.post("/portal/sign-out", data={"csrf_token": csrf_of(overview)})
    assert out.status_code == 303 and out.headers["location"] == "/portal/sign-in"
    assert "You are signed out" in text_of(await portal.get("/portal/sign-in"))
    portal.cookies.set("c3_portal", old_cookie)  # a copied cookie is dead too
    assert (await portal.get(f"/portal/tenants/{tenant['id']}")).status_code == 303


async def test_the_apis_problem_detail_is_shown_beside_the_field(
    api: httpx.AsyncClient, portal: httpx.AsyncClient
) -> None:
    tenant, _ = await signed_in_admin(api, portal)
    settings_url = f"/portal/tenants/{tenant['id']}/settings"
    refused = await submit(
        portal,
        settings_url,
        "settings",
        {
            "federation.mode": "allowlist",
            "federation.allowed_servers": "",
            "registration": "closed",
        },
    )
    assert refused.status_code == 303 and refused.headers["location"] == settings_url
    shown = await portal.get(settings_url)
    beside = re.search(r'id="settings-federation-allowed_servers-error">([^<]*)<', shown.text)
    assert beside and "mode allowlist needs at least one server name" in beside.group(1)
    assert 'aria-invalid="true"' in shown.text
    assert 'value="allowlist" selected' in shown.text  # what was sent is kept
    # Shown once: the next view is clean.
    assert "needs at least one server" not in (await portal.get(settings_url)).text

    keys_url = f"/portal/tenants/{tenant['id']}/api-keys"
    await submit(portal, keys_url, "create-key", {"name": "crm"})
    shown = await portal.get(keys_url)
    beside = re.search(r'id="create-key-scopes-error">([^<]*)<', shown.text)
    assert beside and "at least 1 item" in beside.group(1)
    assert 'value="crm"' in shown.text


async def test_an_api_key_is_shown_once_works_and_stops_when_revoked(
    api: httpx.AsyncClient, portal: httpx.AsyncClient, app: object
) -> None:
    tenant, _ = await signed_in_admin(api, portal)
    keys_url = f"/portal/tenants/{tenant['id']}/api-keys"
    created = await submit(
        portal,
        keys_url,
        "create-key",
        {"name": "billing export", "scopes": ["usage:read", "billing:read"]},
    )
    assert created.status_code == 200
    secret = re.search(r'id="new-key" class="copy" readonly value="(c3k_[^"]+)"', created.text)
    assert secret, created.text[:3000]
    async with api_client(app, **bearer(secret.group(1))) as integrator:
        assert (await integrator.get(f"/v1/tenants/{tenant['id']}/usage")).status_code == 200
        listing = await portal.get(keys_url)
        assert secret.group(1) not in listing.text  # never shown again
        key_id = re.search(r"/api-keys/([^/]+)/revoke", listing.text)
        assert key_id
        revoked = await submit(
            portal, f"{keys_url}/{key_id.group(1)}/revoke", "revoke-key", page=listing
        )
        assert revoked.status_code == 303
        assert "revoked; it stops working at once" in text_of(await portal.get(keys_url))
        assert (await integrator.get(f"/v1/tenants/{tenant['id']}/usage")).status_code == 401


async def test_an_operator_sees_the_fleet_and_drills_into_a_tenant(
    api: httpx.AsyncClient, portal: httpx.AsyncClient
) -> None:
    tenant = await active_tenant(api)
    operator = email()
    created = await api.post(
        "/v1/accounts", json={"email": operator, "password": PASSWORD, "role": "operator"}
    )
    assert created.status_code == 201, created.text
    signed_in = await sign_in(portal, operator)
    assert (await portal.get(signed_in.headers["location"])).headers["location"] == "/portal/fleet"
    fleet = await portal.get("/portal/fleet", params={"q": tenant["slug"]})
    assert fleet.status_code == 200
    assert tenant["server_name"] in fleet.text and "1 of" in text_of(fleet)
    assert (await portal.get(f"/portal/tenants/{tenant['id']}/usage")).status_code == 200
    assert (await portal.get("/portal/plans")).status_code == 200
    assert (await portal.get("/portal/operations/failed")).status_code == 200


async def test_a_refused_access_token_is_renewed_with_the_refresh_token_unnoticed(
    api: httpx.AsyncClient, portal: httpx.AsyncClient, platform_env: dict[str, str]
) -> None:
    """What happens every 15 minutes (the access token expires): the next page trades the
    refresh token for new tokens, once; the old refresh token is then spent."""
    tenant, _ = await signed_in_admin(api, portal)
    store = SessionStore(get_settings())
    session_id = portal.cookies["c3_portal"]
    record = await store.load(session_id)
    assert record is not None and record.refresh_token
    spent = record.refresh_token
    record.access_token = "eyJ.no-longer-valid.token"
    await store.save(session_id, record)

    assert (await portal.get(f"/portal/tenants/{tenant['id']}")).status_code == 200
    renewed = await store.load(session_id)
    assert renewed is not None and renewed.refresh_token != spent
    assert renewed.access_token != "eyJ.no-longer-valid.token"
    reuse = await api.post(
        "/v1/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": spent},
        headers={"Authorization": ""},
    )
    assert reuse.status_code == 401


async def test_a_form_sent_after_the_session_expired_goes_to_sign_in_and_does_nothing(
    api: httpx.AsyncClient, portal: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    tenant, _ = await signed_in_admin(api, portal)
    keys_url = f"/portal/tenants/{tenant['id']}/api-keys"
    page = await portal.get(keys_url)
    digest = hashlib.sha256(portal.cookies["c3_portal"].encode()).hexdigest()
    redis_client.delete(f"{get_settings().redis_namespace}:portal:session:{digest}")
    sent = await portal.post(
        keys_url,
        data={"csrf_token": csrf_of(page), "name": "late", "scopes": "usage:read"},
        headers={"Referer": f"http://api{keys_url}"},
    )
    assert sent.status_code == 303
    assert sent.headers["location"] == f"/portal/sign-in?next={keys_url}&ended=1"
    listed = await api.get("/v1/api-keys")
    assert not [k for k in listed.json()["items"] if k["tenant_id"] == tenant["id"]]


async def test_usage_by_day_and_a_finalized_invoice_as_page_and_csv(
    api: httpx.AsyncClient, portal: httpx.AsyncClient
) -> None:
    tenant, admin = await admin_of_new_tenant(api)
    tenant_id = uuid.UUID(tenant["id"])
    now = datetime.now(UTC)
    this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    with task_session() as session:
        row = session.get(Tenant, tenant_id)
        assert row is not None
        row.created_at = last_month  # a customer since last month
        UsageBatchRepository(session).add_to_counters(
            [
                (tenant_id, "messages", last_month.replace(day=2, hour=9), 3),
                (tenant_id, "messages", last_month.replace(day=2, hour=17), 4),
                (tenant_id, "messages", this_month.replace(hour=1), 5),
                (tenant_id, "api_requests", this_month.replace(hour=1), 50),
            ]
        )
    period = last_month.strftime("%Y-%m")
    # As the monthly finalizer does it, at a chosen "now" (the month has ended by then).
    finalize_one(tenant_id, period, now)
    listed = await api.get(f"/v1/tenants/{tenant['id']}/invoices")
    number = listed.json()["items"][0]["number"]

    await sign_in(portal, admin["email"])
    base = f"/portal/tenants/{tenant['id']}"
    usage = text_of(await portal.get(f"{base}/usage"))
    assert "Messages This month: 5 messages · last month: 7" in usage
    assert f"{last_month.replace(day=2).date().isoformat()} 7 0 0 0" in usage
    assert f"{this_month.date().isoformat()} 5 0 0 50" in usage

    listing = text_of(await portal.get(f"{base}/invoices"))
    assert number in listing and period in listing
    page = await portal.get(f"{base}/invoices/{number}")
    assert page.status_code == 200 and f"Invoice {number}" in text_of(page)
    as_csv = await portal.get(f"{base}/invoices/{number}", params={"format": "csv"})
    from_api = await api.get(f"/v1/tenants/{tenant['id']}/invoices/{number}?format=csv")
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.text == from_api.text
    assert (await portal.get(f"{base}/invoices/C3-99999999")).status_code == 404


def form_fields(page: httpx.Response) -> dict[str, str]:
    """What a browser would send for the page's form as shown: every input's value and every
    select's selected option."""
    fields = {
        html.unescape(name): html.unescape(value)
        for name, value in re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page.text)
    }
    for name, body in re.findall(
        r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', page.text, re.S
    ):
        chosen = re.search(r'value="([^"]*)" selected', body)
        fields[html.unescape(name)] = html.unescape(chosen.group(1)) if chosen else ""
    return fields


async def test_saving_the_settings_form_as_shown_changes_nothing_it_does_not_show(
    api: httpx.AsyncClient, portal: httpx.AsyncClient
) -> None:
    """The SSO scopes and the TURN server (which the form does not edit) survive a save."""
    tenant, admin = await admin_of_new_tenant(api)
    settings = {
        "turn": {"uris": ["turns:turn.acme.example:443?transport=tcp"], "shared_secret": "t" * 16},
        "oidc": {
            "issuer": "https://login.acme.example/realms/staff",
            "client_id": "c3-acme",
            "client_secret": "oidc-client-secret-1",
            "scopes": ["openid", "email"],
        },
    }
    patched = await api.patch(f"/v1/tenants/{tenant['id']}", json=settings)
    assert patched.status_code == 200, patched.text
    before = patched.json()["settings"]

    await sign_in(portal, admin["email"])
    settings_url = f"/portal/tenants/{tenant['id']}/settings"
    page = await portal.get(settings_url)
    fields = form_fields(page)
    assert fields["oidc.scopes"] == "openid email"
    saved = await portal.post(settings_url, data={**fields, "form_id": "settings"})
    assert saved.status_code == 303, saved.text
    after = (await api.get(f"/v1/tenants/{tenant['id']}")).json()["settings"]
    assert after["oidc"] == before["oidc"] and after["turn"] == before["turn"]

    # Edited in the form: the new scopes are what the API shows.
    page = await portal.get(settings_url)
    fields = {**form_fields(page), "oidc.scopes": "openid profile email"}
    await portal.post(settings_url, data={**fields, "form_id": "settings"})
    shown = (await api.get(f"/v1/tenants/{tenant['id']}")).json()["settings"]["oidc"]
    assert shown["scopes"][0] == "openid"  # the API's order: openid first
    assert set(shown["scopes"]) == {"openid", "profile", "email"}
