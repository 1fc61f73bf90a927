"""How every portal page is served: who is signed in (the same principal the API would give
them, from the tokens their session holds), the CSRF check on every form, and errors turned
into pages — a refused form goes back to its page with the API's problem ``detail`` next to
the field it names.

A page handler calls the domain services the REST endpoints call, with that principal; a
``C3Error`` they raise leaves the handler (the request session rolls back) and becomes a page
here, with the status the API would have answered.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.auth import Principal, Scope
from platform_core.db import async_sessionmaker_
from platform_core.errors import C3Error, InvalidRequest, NotFound, Unauthorized
from platform_core.settings import Settings, get_settings
from tenant_api.accounts import service as accounts
from tenant_api.deps import SessionDep, SettingsDep, authenticate
from tenant_api.kit.audit import AuditContext, request_id
from tenant_api.middleware import DATABASE_UNAVAILABLE, UNAVAILABLE_DETAIL
from tenant_api.portal.rendering import SECURITY_HEADERS, flash, render
from tenant_api.portal.sessions import COOKIE, PortalSession, SessionStore
from tenant_api.throttle import Throttle

log = logging.getLogger(__name__)

SIGN_IN = "/portal/sign-in"
ENDED = "Your session has ended. Sign in again to continue where you were."
# Form fields never echoed back into a page after a refused submission.
_SECRET_FIELD = re.compile(r"password|secret|csrf|token", re.IGNORECASE)
_FIELD_PREFIX = re.compile(r"^([a-z_][a-z0-9_.]*): ")
M = TypeVar("M", bound=BaseModel)


class SignInRequired(Exception):
    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or "")
        self.message = message


class CsrfRefused(Exception):
    pass


@dataclass
class PortalUser:
    principal: Principal
    session_id: str
    record: PortalSession

    @property
    def is_operator(self) -> bool:
        return self.principal.platform_wide

    def audit(self, request: Request, session: AsyncSession) -> AuditContext:
        """Who the audit log names for what this person does here (as the API would)."""
        return AuditContext(session, self.principal.actor, request_id(request))

    def require(self, scope: Scope, *, platform_wide: bool = False) -> None:
        """The API's rule (``tenant_api.deps.require``); a page the person may not see at all
        is a 404 here, like another tenant's."""
        if not self.principal.has(scope) or (platform_wide and not self.is_operator):
            raise NotFound("there is no such page for you")


def validated(model: type[M], data: dict[str, Any]) -> M:
    """The API's request body from form values, refused with the API's own wording."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ())) or "request"
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{where}: {message}")
        raise InvalidRequest("; ".join(parts)) from None


def parse_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"no such page: {raw[:40]}") from None


async def _refreshed(
    store: SessionStore, session_id: str, record: PortalSession, settings: Settings
) -> None:
    """Trade the refresh token for new tokens (its own unit of work: the rotation stands
    whatever the page does next). One refresh per session at a time."""
    if not await store.refresh_lock(session_id):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            fresh = await store.load(session_id)
            if fresh is not None and fresh.access_token != record.access_token:
                record.access_token, record.refresh_token = fresh.access_token, fresh.refresh_token
                return
        raise SignInRequired(ENDED)
    try:
        async with async_sessionmaker_()() as own:
            try:
                issued = await accounts.refresh_grant(own, settings, record.refresh_token or "")
            except accounts.RefreshReuse:
                await own.commit()  # the whole sign-in stays revoked
                raise
            await own.commit()
    except Unauthorized:
        await store.forget(session_id)
        raise SignInRequired(ENDED) from None
    finally:
        await store.release_refresh_lock(session_id)
    record.access_token, record.refresh_token = issued.access_token, issued.refresh_token


async def _principal(
    store: SessionStore,
    session_id: str,
    record: PortalSession,
    settings: Settings,
    session: AsyncSession,
) -> Principal:
    throttle = Throttle.for_settings(settings)
    try:
        return await authenticate(record.access_token or "", settings, session, throttle)
    except Unauthorized:
        pass  # expired (15 min) or ended: one refresh decides
    await _refreshed(store, session_id, record, settings)
    try:
        return await authenticate(record.access_token or "", settings, session, throttle)
    except Unauthorized:
        await store.forget(session_id)
        raise SignInRequired(ENDED) from None


async def portal_user(request: Request, session: SessionDep, settings: SettingsDep) -> PortalUser:
    """The signed-in person, or a redirect to the sign-in page (which returns here after)."""
    store = SessionStore(settings)
    session_id = request.cookies.get(COOKIE)
    record = getattr(request.state, "portal_record", None) or await store.load(session_id)
    if record is None or not record.signed_in or session_id is None:
        raise SignInRequired(ENDED if session_id else None)
    principal = await _principal(store, session_id, record, settings, session)
    if not await store.save(session_id, record):  # the idle time starts again
        raise SignInRequired(ENDED)
    user = PortalUser(principal, session_id, record)
    request.state.portal_user = user
    return user


UserDep = Annotated[PortalUser, Depends(portal_user)]


async def done(user: PortalUser, path: str, message: str) -> Response:
    """After a form did its work: back to ``path``, which shows ``message`` once."""
    flash(user.record, message, level="success")
    await SessionStore(get_settings()).save(user.session_id, user.record)
    return RedirectResponse(path, status_code=303, headers=SECURITY_HEADERS)


async def _check_csrf(request: Request) -> None:
    store = SessionStore(get_settings())
    session_id = request.cookies.get(COOKIE)
    record = await store.load(session_id)
    if record is None and session_id:
        # The session expired while the form was open: nothing is done, sign in again.
        raise SignInRequired(ENDED)
    form = await request.form()
    sent = form.get("csrf_token")
    if record is None or not isinstance(sent, str) or not sent:
        raise CsrfRefused
    if not hmac.compare_digest(sent.encode(), record.csrf_token.encode()):
        raise CsrfRefused
    request.state.portal_record = record


def _sign_in_redirect(request: Request, message: str | None) -> Response:
    back = request.url.path if request.method == "GET" else request.headers.get("referer", "")
    target = SIGN_IN
    path = back if back.startswith("/portal/") else _path_of(back)
    if path and path != SIGN_IN:
        target += "?next=" + quote(path, safe="/")
    if message:
        target += ("&" if "?" in target else "?") + "ended=1"
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)


def _path_of(url: str) -> str:
    match = re.match(r"^https?://[^/]+(/portal/[^?#]*)", url)
    return match.group(1) if match else ""


def field_of(detail: str, fields: set[str]) -> tuple[str | None, str]:
    """The form field a problem detail names (``scopes: …``, ``federation: allowed_servers: …``
    → ``federation.allowed_servers``) and the message for beside it; (None, detail) if none."""
    path: list[str] = []
    rest = detail
    while match := _FIELD_PREFIX.match(rest):
        path.extend(match.group(1).split("."))
        rest = rest[match.end() :]
    for size in range(len(path), 0, -1):
        name = ".".join(path[:size])
        if name in fields:
            return name, rest
    if path:  # a group of fields (``oidc: …``): beside its first one
        first = next((f for f in sorted(fields) if f.startswith(path[0] + ".")), None)
        if first:
            return first, rest
        # A field the browser sent nothing for (no box ticked): the page still has its place.
        return ".".join(path), rest
    return None, detail


async def _refused_form(request: Request, status: int, detail: str) -> Response:
    """Back to the form's page with the problem detail beside the field it names (the value
    sent is kept, secrets excepted)."""
    back = getattr(request.state, "portal_back", None)
    user: PortalUser | None = getattr(request.state, "portal_user", None)
    record = user.record if user else getattr(request.state, "portal_record", None)
    session_id = request.cookies.get(COOKIE)
    if back is None or record is None or session_id is None:
        return await _error_page(request, status, detail)
    form = await request.form()
    values = {k: str(v) for k, v in form.items() if not _SECRET_FIELD.search(k)}
    form_id = str(form.get("form_id") or "")
    flash(record, detail, level="error", form=form_id, values=values)
    field, message = field_of(detail, {str(k) for k in form})
    if field:
        flash(record, message, field=field, form=form_id)
    await SessionStore(get_settings()).save(session_id, record)
    return RedirectResponse(back, status_code=303, headers=SECURITY_HEADERS)


async def _error_page(request: Request, status: int, detail: str) -> Response:
    titles = {
        403: "Not allowed",
        404: "Not found",
        409: "Conflict",
        429: "Too many requests",
        503: "Unavailable",
    }
    return await render(
        request,
        "error.html",
        status=status,
        title=titles.get(status, "Something went wrong"),
        detail=detail,
    )


async def _served(
    request: Request, handler: Callable[[Request], Coroutine[Any, Any, Response]]
) -> Response:
    try:
        if request.method == "POST":
            await _check_csrf(request)
        return await handler(request)
    except SignInRequired as exc:
        return _sign_in_redirect(request, exc.message)
    except CsrfRefused:
        detail = (
            "This form was refused: it did not carry this session's security token (CSRF). "
            "Reload the page and send it again."
        )
        return await render(request, "error.html", status=403, title="Form refused", detail=detail)
    except C3Error as exc:
        if request.method == "POST" and exc.status < 500:
            return await _refused_form(request, exc.status, exc.detail)
        return await _error_page(request, exc.status, exc.detail)
    except RequestValidationError:
        return await _error_page(request, 404, "There is no such page.")
    except DATABASE_UNAVAILABLE:
        return await _error_page(request, 503, UNAVAILABLE_DETAIL)
    except Exception:
        log.exception("unhandled error on portal page %s %s", request.method, request.url.path)
        return await _error_page(request, 500, "An unexpected error occurred; it has been logged.")


class PortalRoute(APIRoute):
    """Every portal route: CSRF on POST, sign-in redirects, errors as pages, security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def portal_handler(request: Request) -> Response:
            response = await _served(request, handler)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return portal_handler
