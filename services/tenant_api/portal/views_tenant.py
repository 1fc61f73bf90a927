"""A tenant's pages (its admins, and operators drilling down): overview, users, registration
tokens, usage, invoices, API keys, homeserver settings and the audit log.

Each page authorises as the REST endpoint does (the principal's scopes, then the tenant through
``TenantRepository.get_or_404``: another tenant's page is a 404) and calls the same services."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from platform_core.auth import TENANT_KEY_SCOPES, Scope
from platform_core.crypto import SecretBox
from platform_core.errors import Conflict, NotFound
from platform_core.models import Meter, Tenant
from platform_core.settings import Settings
from tenant_api.api_keys import service as api_keys
from tenant_api.api_keys.repository import ApiKeyRepository
from tenant_api.api_keys.schemas import ApiKeyCreate
from tenant_api.audit.repository import AuditRepository
from tenant_api.deps import SessionDep, SettingsDep
from tenant_api.invoices import service as invoices
from tenant_api.invoices.endpoints import _csv as invoice_csv
from tenant_api.operations.repository import OperationRepository
from tenant_api.plans import service as plans
from tenant_api.plans.repository import PlanRepository
from tenant_api.portal.charts import DailySeries, bar_chart, days_between
from tenant_api.portal.rendering import render
from tenant_api.portal.routing import (
    PortalRoute,
    PortalUser,
    UserDep,
    done,
    parse_id,
    validated,
)
from tenant_api.portal.settings_form import patch_from_form
from tenant_api.readiness.service import check_readiness
from tenant_api.registration_tokens import service as registration_tokens
from tenant_api.registration_tokens.schemas import RegistrationTokenCreate
from tenant_api.tenants import service as tenants
from tenant_api.tenants.repository import TenantRepository
from tenant_api.tenants.schemas import TenantOut
from tenant_api.usage.repository import UsageRepository
from tenant_api.users import service as users
from tenant_api.users.schemas import HomeserverUserCreate, HomeserverUserPatch

router = APIRouter(prefix="/portal/tenants/{tenant_id}", route_class=PortalRoute)

CHARTED = [
    (Meter.MESSAGES, "Messages", "messages"),
    (Meter.ACTIVE_USERS, "Active users (first active this month)", "users"),
    (Meter.MEDIA_BYTES, "Media uploaded", "bytes"),
    (Meter.API_REQUESTS, "API requests", "requests"),
]


async def _tenant(
    user: PortalUser, session: SessionDep, settings: Settings, tenant_id: str, scope: Scope
) -> tuple[Tenant, TenantOut]:
    user.require(scope)
    repository = TenantRepository(session, user.principal)
    tenant = await repository.get_or_404(parse_id(tenant_id))
    codes = await repository.plan_codes({tenant.plan_id})
    return tenant, tenants.to_out(tenant, codes[tenant.plan_id], settings)


def _back(request: Request, tenant_id: str, page: str = "") -> str:
    path = f"/portal/tenants/{tenant_id}" + (f"/{page}" if page else "")
    request.state.portal_back = path
    return path


async def _form(request: Request) -> dict[str, str]:
    return {k: str(v) for k, v in (await request.form()).items()}


@router.get("")
async def overview(
    request: Request, tenant_id: str, user: UserDep, session: SessionDep, settings: SettingsDep
) -> Response:
    tenant, out = await _tenant(user, session, settings, tenant_id, Scope.TENANTS_READ)
    plan = plans.to_out(await plans.get_plan(PlanRepository(session), out.plan))
    latest = await OperationRepository(session, user.principal).latest_for([tenant.id])
    return await render(
        request,
        "tenant_overview.html",
        tenant=out,
        plan=plan,
        operation=latest.get(tenant.id),
        title=f"{out.display_name}: overview",
        page="overview",
    )


@router.get("/readiness")
async def readiness_page(
    request: Request, tenant_id: str, user: UserDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """The client readiness check, run now through the proxy (bounded by
    C3_READINESS_TIMEOUT_S; the same checks as GET /v1/tenants/{id}/readiness)."""
    tenant, out = await _tenant(user, session, settings, tenant_id, Scope.TENANTS_READ)
    checks = await check_readiness(tenant, settings)
    return await render(
        request,
        "readiness.html",
        tenant=out,
        checks=checks,
        ready=all(check.ok is not False for check in checks),
        checked_at=datetime.now(UTC),
        title=f"{out.display_name}: client readiness",
        page="readiness",
    )


@router.get("/users")
async def users_page(
    request: Request,
    tenant_id: str,
    user: UserDep,
    session: SessionDep,
    settings: SettingsDep,
    q: Annotated[str, Query(max_length=100)] = "",
) -> Response:
    _, out = await _tenant(user, session, settings, tenant_id, Scope.TENANTS_READ)
    tenant, homeserver, box = await users.homeserver_of(out.id, session, user.principal, settings)
    found, unavailable = [], None
    try:
        page = await users.list_users(tenant, homeserver, box, start=0, limit=500)
        needle = q.strip().lower()
        found = [
            u
            for u in page.items
            if not needle or needle in u.username or needle in (u.displayname or "").lower()
        ]
    except Conflict as exc:
        unavailable = exc.detail
    return await render(
        request,
        "users.html",
        tenant=out,
        users=found,
        q=q,
        unavailable=unavailable,
        title=f"{out.display_name}: users",
        page="users",
    )


@router.post("/users")
async def create_user(
    request: Request, tenant_id: str, user: UserDep, session: SessionDep, settings: SettingsDep
) -> Response:
    back = _back(request, tenant_id, "users")
    user.require(Scope.USERS_WRITE)
    form = await _form(request)
    body = validated(
        HomeserverUserCreate,
        {
            "username": form.get("username", "").strip(),
            "password": form.get("password", ""),
            "displayname": form.get("displayname") or None,
            "admin": form.get("admin") == "on",
        },
    )
    tenant, homeserver, box = await users.homeserver_of(
        parse_id(tenant_id), session, user.principal, settings
    )
    created = await users.create_user(tenant, homeserver, body, box, user.audit(request, session))
    return await done(user, back, f"User {created.user_id} created.")


@router.post("/users/{username}/deactivate")
async def deactivate_user(
    request: Request,
    tenant_id: str,
    username: str,
    user: UserDep,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    back = _back(request, tenant_id, "users")
    user.require(Scope.USERS_WRITE)
    form = await _form(request)
    tenant, homeserver, box = await users.homeserver_of(
        parse_id(tenant_id), session, user.principal, settings
    )
    gone = await users.deactivate_user(
        tenant,
        homeserver,
        box,
        user.audit(request, session),
        username,
        erase=form.get("erase") == "on",
    )
    return await done(user, back, f"User {gone.user_id} deactivated.")


@router.post("/users/{username}/password")
async def reset_password(
    request: Request,
    tenant_id: str,
    username: str,
    user: UserDep,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    back = _back(request, tenant_id, "users")
    user.require(Scope.USERS_WRITE)
    form = await _form(request)
    body = validated(HomeserverUserPatch, {"password": form.get("password", "")})
    tenant, homeserver, box = await users.homeserver_of(
        parse_id(tenant_id), session, user.principal, settings
    )
    changed = await users.update_user(
        tenant, homeserver, box, user.audit(request, session), username, body
    )
    return await done(
        user, back, f"Password of {changed.user_id} reset; it is signed out everywhere."
    )


@router.get("/registration-tokens")
async def tokens_page(
    request: Request, tenant_id: str, user: UserDep, session: SessionDep, settings: SettingsDep
) -> Response:
    _, out = await _tenant(user, session, settings, tenant_id, Scope.USERS_WRITE)
    tenant, homeserver, box = await users.homeserver_of(out.id, session, user.principal, settings)
    items, unavailable = [], None
    try:
        items = (await registration_tokens.list_tokens(tenant, homeserver, box, valid=None)).items
    except Conflict as exc:
        unavailable = exc.detail
    return await render(
        request,
        "registration_tokens.html",
        tenant=out,
        tokens=items,
        unavailable=unavailable,
        title=f"{out.display_name}: registration tokens",
        page="tokens",
    )


def _expiry(raw: str) -> str | None:
    """A date field (YYYY-MM-DD) as the API's instant: the start of that day, UTC."""
    return f"{raw}T00:00:00Z" if raw else None


@router.post("/registration-tokens")
async def create_token(
    request: Request, tenant_id: str, user: UserDep, session: SessionDep, settings: SettingsDep
) -> Response:
    back = _back(request, tenant_id, "registration-tokens")
    user.require(Scope.USERS_WRITE)
    form = await _form(request)
    body = validated(
        RegistrationTokenCreate,
        {
            "uses_allowed": form.get("uses_allowed") or None,
            "expires_at": _expiry(form.get("expires_at", "")),
        },
    )
    tenant, homeserver, box = await users.homeserver_of(
        parse_id(tenant_id), session, user.principal, settings
    )
    created = await registration_tokens.create_token(
        tenant, homeserver, box, user.audit(request, session), body
    )
    return await done(user, back, f"Registration token {created.token} created.")


@router.post("/registration-tokens/{token}/delete")
async def delete_token(
    request: Request,
    tenant_id: str,
    token: str,
    user: UserDep,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    back = _back(request, tenant_id, "registration-tokens")
    user.require(Scope.USERS_WRITE)
    tenant, homeserver, box = await users.homeserver_of(
        parse_id(tenant_id), session, user.principal, settings
    )
    await registration_tokens.delete_token(
        tenant, homeserver, box, user.audit(request, session), token[:64]
    )
    return await done(user, back, "Registration token revoked.")


def _month_start(day: date, months_back: int = 0) -> date:
    month = day.month - months_back
    year = day.year + (month - 1) // 12
    return date(year, (month - 1) % 12 + 1, 1)


@router.get("/usage")
async def usage_page(
    request: Request, tenant_id: str, user: UserDep, session: SessionDep, settings: SettingsDep
) -> Response:
    tenant, out = await _tenant(user, session, settings, tenant_id, Scope.USAGE_READ)
    today = datetime.now(UTC).date()
    start, this_month, end = _month_start(today, 1), _month_start(today), _month_start(today, -1)
    at = [datetime(d.year, d.month, d.day, tzinfo=UTC) for d in (start, end)]
    per_day: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    meters = [m.value for m, _, _ in CHARTED]
    for hour, meter, quantity in await UsageRepository(session).hourly(
        tenant.id, at[0], at[1], meters
    ):
        per_day[meter][hour.date()] += quantity
    days = days_between(start, end)
    series = [
        DailySeries(title, unit, [(d, per_day[m.value][d]) for d in days])
        for m, title, unit in CHARTED
    ]
    charts = [(s, bar_chart(s, f"chart-{n}")) for n, s in enumerate(series)]
    months = {
        "this": {
            m.value: sum(per_day[m.value][d] for d in days if d >= this_month) for m, *_ in CHARTED
        },
        "last": {
            m.value: sum(per_day[m.value][d] for d in days if d < this_month) for m, *_ in CHARTED
        },
    }
    return await render(
        request,
        "usage.html",
        tenant=out,
        charts=charts,
        charted=CHARTED,
        rows=[(d, [per_day[m.value][d] for m, *_ in CHARTED]) for d in days if d <= today],
        months=months,
        this_month=this_month,
        last_month=start,
        title=f"{out.display_name}: usage",
        page="usage",
    )


@router.get("/invoices")
async def invoices_page(
    request: Request, tenant_id: str, user: UserDep, session: SessionDep, settings: SettingsDep
) -> Response:
    tenant, out = await _tenant(user, session, settings, tenant_id, Scope.BILLING_READ)
    upcoming = await invoices.upcoming_now(session, tenant.id)
    finalized = await invoices.finalized_invoices(session, tenant.id)
    return await render(
        request,
        "invoices.html",
        tenant=out,
        upcoming=upcoming,
        invoices=finalized,
        title=f"{out.display_name}: invoices",
        page="invoices",
    )


@router.get("/invoices/{number}")
async def invoice_page(
    request: Request,
    tenant_id: str,
    number: str,
    user: UserDep,
    session: SessionDep,
    settings: SettingsDep,
    format_: Annotated[str | None, Query(alias="format", pattern="^(html|csv)$")] = None,
) -> Response:
    """One invoice (``upcoming``: this month so far), as a page or as the API's CSV."""
    tenant, out = await _tenant(user, session, settings, tenant_id, Scope.BILLING_READ)
    if number == "upcoming":
        doc = await invoices.upcoming_now(session, tenant.id)
    else:
        invoice = await invoices.invoice_by_number(session, tenant.id, number[:40])
        if invoice is None:
            raise NotFound(f"invoice {number[:40]} not found")
        doc = invoices.doc_of(invoice)
    if format_ == "csv":
        return invoice_csv(doc)
    return await render(
        request,
        "invoice.html",
        tenant=out,
        invoice=doc,
        number=number,
        title=f"{out.display_name}: invoice {doc.number or doc.period + ' (upcoming)'}",
        page="invoices",
    )


async def _keys_page(
    request: Request, user: PortalUser, session: SessionDep, out: TenantOut, **extra: Any
) -> Response:
    keys = await ApiKeyRepository(session, user.principal).visible()
    mine = [api_keys.to_out(k) for k in keys if k.tenant_id == out.id]
    return await render(
        request,
        "api_keys.html",
        tenant=out,
        keys=mine,
        scopes=sorted(s.value for s in TENANT_KEY_SCOPES),
        title=f"{out.display_name}: API keys",
        page="keys",
        **extra,
    )


@router.get("/api-keys")
async def keys_page(
    request: Request, tenant_id: str, user: UserDep, session: SessionDep, settings: SettingsDep
) -> Response:
    _, out = await _tenant(user, session, settings, tenant_id, Scope.KEYS_WRITE)
    return await _keys_page(request, user, session, out)


@router.post("/api-keys")
async def create_key(
    request: Request, tenant_id: str, user: UserDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """Answers the page itself with the new key (it is shown this once and stored nowhere in
    clear: not in the session, not in a redirect)."""
    _back(request, tenant_id, "api-keys")
    _, out = await _tenant(user, session, settings, tenant_id, Scope.KEYS_WRITE)
    form = await request.form()
    body = validated(
        ApiKeyCreate,
        {
            "name": str(form.get("name", "")).strip(),
            "scopes": [str(s) for s in form.getlist("scopes")],
            "tenant_id": str(out.id),
        },
    )
    key, secret = await api_keys.create_key(
        session, settings, user.principal, user.audit(request, session), body
    )
    await session.flush()
    return await _keys_page(
        request, user, session, out, created=api_keys.to_out(key), secret=secret
    )


@router.post("/api-keys/{key_id}/revoke")
async def revoke_key(
    request: Request,
    tenant_id: str,
    key_id: str,
    user: UserDep,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    back = _back(request, tenant_id, "api-keys")
    _, out = await _tenant(user, session, settings, tenant_id, Scope.KEYS_WRITE)
    key = await ApiKeyRepository(session, user.principal).get_visible(key_id[:64])
    if key is None or key.tenant_id != out.id:
        raise NotFound(f"API key {key_id[:64]} not found")
    await api_keys.revoke_key(session, user.principal, user.audit(request, session), key.key_id)
    return await done(user, back, f"API key {key.key_id} revoked; it stops working at once.")


@router.get("/settings")
async def settings_page(
    request: Request, tenant_id: str, user: UserDep, session: SessionDep, settings: SettingsDep
) -> Response:
    _, out = await _tenant(user, session, settings, tenant_id, Scope.TENANTS_READ)
    return await render(
        request,
        "settings.html",
        tenant=out,
        current=out.settings,
        title=f"{out.display_name}: homeserver settings",
        page="settings",
    )


@router.post("/settings")
async def save_settings(
    request: Request, tenant_id: str, user: UserDep, session: SessionDep, settings: SettingsDep
) -> Response:
    back = _back(request, tenant_id, "settings")
    user.require(Scope.TENANTS_WRITE)
    repository = TenantRepository(session, user.principal)
    tenant = await repository.get_or_404(parse_id(tenant_id), for_update=True)
    body = patch_from_form(await _form(request))
    _, operation, _ = await tenants.update_tenant(
        repository,
        OperationRepository(session, user.principal),
        user.audit(request, session),
        tenant,
        body,
        SecretBox(settings.require_secret_key()),
        allowed_networks=settings.outbound_allowed_networks,
    )
    message = "Settings saved."
    if operation is not None:
        message += " The homeserver restarts with them shortly; clients reconnect by themselves."
    return await done(user, back, message)


@router.get("/audit")
async def audit_page(
    request: Request, tenant_id: str, user: UserDep, session: SessionDep, settings: SettingsDep
) -> Response:
    tenant, out = await _tenant(user, session, settings, tenant_id, Scope.AUDIT_READ)
    events = await AuditRepository(session, user.principal).recent(tenant_id=tenant.id, limit=200)
    return await render(
        request,
        "audit.html",
        tenant=out,
        events=events,
        title=f"{out.display_name}: audit log",
        page="audit",
    )
