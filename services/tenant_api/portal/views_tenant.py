"""A tenant's pages (its admins, and operators drilling down): overview, users, registration
tokens, usage, invoices, API keys, homeserver settings and the audit log.

Each page authorises as the REST endpoint does (the principal's scopes, then the tenant through
``TenantRepository.get_or_404``: another tenant's page is a 404) and calls the same services."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.auth import TENANT_KEY_SCOPES, Scope
from platform_core.crypto import SecretBox
from platform_core.errors import Conflict, NotFound
from platform_core.models import Homeserver, Meter, Tenant
from platform_core.settings import Settings
from tenant_api.api_keys import service as api_keys
from tenant_api.api_keys.repository import ApiKeyRepository
from tenant_api.api_keys.schemas import ApiKeyCreate
from tenant_api.audit.repository import AuditRepository
from tenant_api.deps import SessionDep, SettingsDep
from tenant_api.invoices import service as invoices
from tenant_api.invoices.endpoints import csv_response as invoice_csv
from tenant_api.kit.audit import AuditContext
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


@dataclass
class TenantPages:
    """What every page of one tenant works with: the request, the signed-in person, the
    request session and settings, and the tenant id from the path (checked when loaded)."""

    request: Request
    tenant_id: str
    user: PortalUser
    session: AsyncSession
    settings: Settings

    async def tenant(self, scope: Scope) -> tuple[Tenant, TenantOut]:
        """The tenant as the API shows it, once the person holds ``scope`` (else a 404)."""
        self.user.require(scope)
        repository = TenantRepository(self.session, self.user.principal)
        tenant = await repository.get_or_404(parse_id(self.tenant_id))
        codes = await repository.plan_codes({tenant.plan_id})
        asleep = (await repository.asleep_since({tenant.id})).get(tenant.id)
        return tenant, tenants.to_out(
            tenant, codes[tenant.plan_id], self.settings, asleep_since=asleep
        )

    async def homeserver(self) -> tuple[Tenant, Homeserver | None, SecretBox]:
        """The tenant, its homeserver and the secrets box, as the users endpoints load them."""
        return await users.homeserver_of(
            parse_id(self.tenant_id), self.session, self.user.principal, self.settings
        )

    def back(self, page: str = "") -> str:
        """The page a form returns to (also where a refused form shows its problem)."""
        path = f"/portal/tenants/{self.tenant_id}" + (f"/{page}" if page else "")
        self.request.state.portal_back = path
        return path

    async def form(self) -> dict[str, str]:
        return {k: str(v) for k, v in (await self.request.form()).items()}

    async def homeserver_form(self, page: str) -> tuple[str, dict[str, str]]:
        """A form that changes the homeserver's users or tokens: where it returns, what it
        sent (after the scope check the users endpoints make)."""
        back = self.back(page)
        self.user.require(Scope.USERS_WRITE)
        return back, await self.form()

    def audit(self) -> AuditContext:
        return self.user.audit(self.request, self.session)

    async def done(self, back: str, message: str) -> Response:
        return await done(self.user, back, message)

    async def render(
        self, template: str, out: TenantOut, page: str, heading: str, **context: Any
    ) -> Response:
        """A tenant page: titled ``<display name>: <heading>``, ``page`` marked in the menu."""
        return await render(
            self.request,
            template,
            tenant=out,
            title=f"{out.display_name}: {heading}",
            page=page,
            **context,
        )


async def tenant_pages(
    request: Request, tenant_id: str, user: UserDep, session: SessionDep, settings: SettingsDep
) -> TenantPages:
    return TenantPages(request, tenant_id, user, session, settings)


PagesDep = Annotated[TenantPages, Depends(tenant_pages)]


@router.get("", name="portal.overview")
async def overview(pages: PagesDep) -> Response:
    tenant, out = await pages.tenant(Scope.TENANTS_READ)
    plan = plans.to_out(await plans.get_plan(PlanRepository(pages.session), out.plan))
    latest = await OperationRepository(pages.session, pages.user.principal).latest_for([tenant.id])
    return await pages.render(
        "tenant_overview.html",
        out,
        "overview",
        "overview",
        plan=plan,
        operation=latest.get(tenant.id),
    )


@router.get("/readiness", name="portal.readiness_page")
async def readiness_page(pages: PagesDep) -> Response:
    """The client readiness check, run now through the proxy (bounded by
    C3_READINESS_TIMEOUT_S; the same checks as GET /v1/tenants/{id}/readiness)."""
    tenant, out = await pages.tenant(Scope.TENANTS_READ)
    checks = await check_readiness(tenant, pages.settings)
    return await pages.render(
        "readiness.html",
        out,
        "readiness",
        "client readiness",
        checks=checks,
        ready=all(check.ok is not False for check in checks),
        checked_at=datetime.now(UTC),
    )


@router.get("/users", name="portal.users_page")
async def users_page(pages: PagesDep, q: Annotated[str, Query(max_length=100)] = "") -> Response:
    _, out = await pages.tenant(Scope.TENANTS_READ)
    tenant, homeserver, box = await pages.homeserver()
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
    return await pages.render(
        "users.html", out, "users", "users", users=found, q=q, unavailable=unavailable
    )


@router.post("/users", name="portal.create_user")
async def create_user(pages: PagesDep) -> Response:
    back, form = await pages.homeserver_form("users")
    body = validated(
        HomeserverUserCreate,
        {
            "username": form.get("username", "").strip(),
            "password": form.get("password", ""),
            "displayname": form.get("displayname") or None,
            "admin": form.get("admin") == "on",
        },
    )
    tenant, homeserver, box = await pages.homeserver()
    created = await users.create_user(tenant, homeserver, body, box, pages.audit())
    return await pages.done(back, f"User {created.user_id} created.")


@router.post("/users/{username}/deactivate", name="portal.deactivate_user")
async def deactivate_user(pages: PagesDep, username: str) -> Response:
    back, form = await pages.homeserver_form("users")
    tenant, homeserver, box = await pages.homeserver()
    gone = await users.deactivate_user(
        tenant, homeserver, box, pages.audit(), username, erase=form.get("erase") == "on"
    )
    return await pages.done(back, f"User {gone.user_id} deactivated.")


@router.post("/users/{username}/password", name="portal.reset_password")
async def reset_password(pages: PagesDep, username: str) -> Response:
    back, form = await pages.homeserver_form("users")
    body = validated(HomeserverUserPatch, {"password": form.get("password", "")})
    tenant, homeserver, box = await pages.homeserver()
    changed = await users.update_user(tenant, homeserver, box, pages.audit(), username, body)
    return await pages.done(
        back, f"Password of {changed.user_id} reset; it is signed out everywhere."
    )


@router.get("/registration-tokens", name="portal.tokens_page")
async def tokens_page(pages: PagesDep) -> Response:
    _, out = await pages.tenant(Scope.USERS_WRITE)
    tenant, homeserver, box = await pages.homeserver()
    items, unavailable = [], None
    try:
        items = (await registration_tokens.list_tokens(tenant, homeserver, box, valid=None)).items
    except Conflict as exc:
        unavailable = exc.detail
    return await pages.render(
        "registration_tokens.html",
        out,
        "tokens",
        "registration tokens",
        tokens=items,
        unavailable=unavailable,
    )


def _expiry(raw: str) -> str | None:
    """A date field (YYYY-MM-DD) as the API's instant: the start of that day, UTC."""
    return f"{raw}T00:00:00Z" if raw else None


@router.post("/registration-tokens", name="portal.create_token")
async def create_token(pages: PagesDep) -> Response:
    back, form = await pages.homeserver_form("registration-tokens")
    body = validated(
        RegistrationTokenCreate,
        {
            "uses_allowed": form.get("uses_allowed") or None,
            "expires_at": _expiry(form.get("expires_at", "")),
        },
    )
    tenant, homeserver, box = await pages.homeserver()
    created = await registration_tokens.create_token(tenant, homeserver, box, pages.audit(), body)
    return await pages.done(back, f"Registration token {created.token} created.")


@router.post("/registration-tokens/{token}/delete", name="portal.delete_token")
async def delete_token(pages: PagesDep, token: str) -> Response:
    back, _ = await pages.homeserver_form("registration-tokens")
    tenant, homeserver, box = await pages.homeserver()
    await registration_tokens.delete_token(tenant, homeserver, box, pages.audit(), token[:64])
    return await pages.done(back, "Registration token revoked.")


def _month_start(day: date, months_back: int = 0) -> date:
    month = day.month - months_back
    year = day.year + (month - 1) // 12
    return date(year, (month - 1) % 12 + 1, 1)


@router.get("/usage", name="portal.usage_page")
async def usage_page(pages: PagesDep) -> Response:
    tenant, out = await pages.tenant(Scope.USAGE_READ)
    today = datetime.now(UTC).date()
    start, this_month, end = _month_start(today, 1), _month_start(today), _month_start(today, -1)
    at = [datetime(d.year, d.month, d.day, tzinfo=UTC) for d in (start, end)]
    per_day: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    meters = [m.value for m, _, _ in CHARTED]
    for hour, meter, quantity in await UsageRepository(pages.session).hourly(
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
    return await pages.render(
        "usage.html",
        out,
        "usage",
        "usage",
        charts=charts,
        charted=CHARTED,
        rows=[(d, [per_day[m.value][d] for m, *_ in CHARTED]) for d in days if d <= today],
        months=months,
        this_month=this_month,
        last_month=start,
    )


@router.get("/invoices", name="portal.invoices_page")
async def invoices_page(pages: PagesDep) -> Response:
    tenant, out = await pages.tenant(Scope.BILLING_READ)
    upcoming = await invoices.upcoming_now(pages.session, tenant.id)
    finalized = await invoices.finalized_invoices(pages.session, tenant.id)
    return await pages.render(
        "invoices.html", out, "invoices", "invoices", upcoming=upcoming, invoices=finalized
    )


@router.get("/invoices/{number}", name="portal.invoice_page")
async def invoice_page(
    pages: PagesDep,
    number: str,
    format_: Annotated[str | None, Query(alias="format", pattern="^(html|csv)$")] = None,
) -> Response:
    """One invoice (``upcoming``: this month so far), as a page or as the API's CSV."""
    tenant, out = await pages.tenant(Scope.BILLING_READ)
    if number == "upcoming":
        doc = await invoices.upcoming_now(pages.session, tenant.id)
    else:
        invoice = await invoices.invoice_by_number(pages.session, tenant.id, number[:40])
        if invoice is None:
            raise NotFound(f"invoice {number[:40]} not found")
        doc = invoices.doc_of(invoice)
    if format_ == "csv":
        return invoice_csv(doc)
    return await pages.render(
        "invoice.html",
        out,
        "invoices",
        f"invoice {doc.number or doc.period + ' (upcoming)'}",
        invoice=doc,
        number=number,
    )


async def _keys_page(pages: TenantPages, out: TenantOut, **extra: Any) -> Response:
    keys = await ApiKeyRepository(pages.session, pages.user.principal).visible()
    mine = [api_keys.to_out(k) for k in keys if k.tenant_id == out.id]
    return await pages.render(
        "api_keys.html",
        out,
        "keys",
        "API keys",
        keys=mine,
        scopes=sorted(s.value for s in TENANT_KEY_SCOPES),
        **extra,
    )


@router.get("/api-keys", name="portal.keys_page")
async def keys_page(pages: PagesDep) -> Response:
    _, out = await pages.tenant(Scope.KEYS_WRITE)
    return await _keys_page(pages, out)


@router.post("/api-keys", name="portal.create_key")
async def create_key(pages: PagesDep) -> Response:
    """Answers the page itself with the new key (it is shown this once and stored nowhere in
    clear: not in the session, not in a redirect)."""
    pages.back("api-keys")
    _, out = await pages.tenant(Scope.KEYS_WRITE)
    form = await pages.request.form()
    body = validated(
        ApiKeyCreate,
        {
            "name": str(form.get("name", "")).strip(),
            "scopes": [str(s) for s in form.getlist("scopes")],
            "tenant_id": str(out.id),
        },
    )
    key, secret = await api_keys.create_key(
        pages.session, pages.settings, pages.user.principal, pages.audit(), body
    )
    await pages.session.flush()
    return await _keys_page(pages, out, created=api_keys.to_out(key), secret=secret)


@router.post("/api-keys/{key_id}/revoke", name="portal.revoke_key")
async def revoke_key(pages: PagesDep, key_id: str) -> Response:
    back = pages.back("api-keys")
    _, out = await pages.tenant(Scope.KEYS_WRITE)
    key = await ApiKeyRepository(pages.session, pages.user.principal).get_visible(key_id[:64])
    if key is None or key.tenant_id != out.id:
        raise NotFound(f"API key {key_id[:64]} not found")
    await api_keys.revoke_key(pages.session, pages.user.principal, pages.audit(), key.key_id)
    return await pages.done(back, f"API key {key.key_id} revoked; it stops working at once.")


@router.get("/settings", name="portal.settings_page")
async def settings_page(pages: PagesDep) -> Response:
    _, out = await pages.tenant(Scope.TENANTS_READ)
    return await pages.render(
        "settings.html", out, "settings", "homeserver settings", current=out.settings
    )


@router.post("/settings", name="portal.save_settings")
async def save_settings(pages: PagesDep) -> Response:
    back = pages.back("settings")
    pages.user.require(Scope.TENANTS_WRITE)
    repository = TenantRepository(pages.session, pages.user.principal)
    tenant = await repository.get_or_404(parse_id(pages.tenant_id), for_update=True)
    body = patch_from_form(await pages.form())
    _, operation, _ = await tenants.update_tenant(
        repository,
        OperationRepository(pages.session, pages.user.principal),
        pages.audit(),
        tenant,
        body,
        SecretBox(pages.settings.require_secret_key()),
        allowed_networks=pages.settings.outbound_allowed_networks,
    )
    message = "Settings saved."
    if operation is not None:
        message += " The homeserver restarts with them shortly; clients reconnect by themselves."
    return await pages.done(back, message)


@router.get("/audit", name="portal.audit_page")
async def audit_page(pages: PagesDep) -> Response:
    tenant, out = await pages.tenant(Scope.AUDIT_READ)
    audit = AuditRepository(pages.session, pages.user.principal)
    events = await audit.recent(tenant_id=tenant.id, limit=200)
    return await pages.render("audit.html", out, "audit", "audit log", events=events)
