"""Sign-in, sign-out and the portal's front door.

Signing in is ``POST /v1/auth/token`` itself (the same function: the same failure budget,
lockout and audit event); the tokens it answers stay in the server-side session and the browser
gets only a random session id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import RedirectResponse

from platform_core.settings import Settings
from tenant_api.accounts import service as accounts
from tenant_api.accounts.endpoints import token as token_endpoint
from tenant_api.deps import SessionDep, SettingsDep
from tenant_api.portal.rendering import SECURITY_HEADERS, flash, render
from tenant_api.portal.routing import SIGN_IN, PortalRoute, UserDep
from tenant_api.portal.sessions import (
    COOKIE,
    PortalSession,
    SessionStore,
    anonymous_session,
    cookie_is_secure,
)

router = APIRouter(prefix="/portal", route_class=PortalRoute, include_in_schema=False)


def safe_next(target: str | None) -> str:
    """Only a portal path of this site (no open redirect to another host)."""
    if target and target.startswith("/portal/") and not target.startswith("//"):
        return target if "\\" not in target else "/portal/"
    return "/portal/"


def _set_cookie(response: Response, request: Request, settings: Settings, session_id: str) -> None:
    response.set_cookie(
        COOKIE,
        session_id,
        httponly=True,
        secure=cookie_is_secure(request, settings),
        samesite="lax",
        path="/portal",
    )


@router.get("/sign-in", name="portal.sign_in_page")
async def sign_in_page(
    request: Request,
    settings: SettingsDep,
    next_: Annotated[str | None, Query(alias="next", max_length=500)] = None,
    ended: Annotated[str | None, Query(max_length=5)] = None,
) -> Response:
    store = SessionStore(settings)
    session_id = request.cookies.get(COOKIE)
    record = await store.load(session_id)
    if record is None or session_id is None:
        record = anonymous_session()
        session_id = await store.create(record)
    elif record.signed_in:
        return RedirectResponse(safe_next(next_), status_code=303, headers=SECURITY_HEADERS)
    if ended and not record.flash:
        flash(record, "Your session has ended. Sign in again to continue where you were.")
    response = await render(
        request,
        "sign_in.html",
        record=record,
        session_id=session_id,
        next=safe_next(next_),
        title="Sign in",
    )
    _set_cookie(response, request, settings, session_id)
    return response


@router.post("/sign-in", name="portal.sign_in")
async def sign_in(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    email: Annotated[str, Form(max_length=254)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next_: Annotated[str, Form(alias="next", max_length=500)] = "/portal/",
) -> Response:
    target = safe_next(next_)
    request.state.portal_back = f"{SIGN_IN}?next={target}"
    issued = await token_endpoint(
        request, session, settings, grant_type="password", username=email, password=password
    )
    store = SessionStore(settings)
    old = request.cookies.get(COOKIE)
    if old:
        await store.forget(old)  # a new id for the signed-in session (no fixation)
    record = anonymous_session()
    record.access_token, record.refresh_token = issued.access_token, issued.refresh_token
    record.email = email.strip().lower()
    session_id = await store.create(record)
    response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
    _set_cookie(response, request, settings, session_id)
    return response


@router.post("/sign-out", name="portal.sign_out")
async def sign_out(
    request: Request, session: SessionDep, settings: SettingsDep, user: UserDep
) -> Response:
    """Ends the sign-in everywhere it matters: its refresh token family is revoked and the
    session record deleted (the access token in it dies with it)."""
    await accounts.revoke(session, settings, user.record.refresh_token or "")
    store = SessionStore(settings)
    await store.forget(user.session_id)
    record: PortalSession = anonymous_session()
    flash(record, "You are signed out.")
    session_id = await store.create(record)
    response = RedirectResponse(SIGN_IN, status_code=303, headers=SECURITY_HEADERS)
    _set_cookie(response, request, settings, session_id)
    return response


@router.get("/", name="portal.home")
async def home(user: UserDep) -> Response:
    if user.is_operator:
        return RedirectResponse("/portal/fleet", status_code=303)
    return RedirectResponse(f"/portal/tenants/{user.principal.tenant_id}", status_code=303)
