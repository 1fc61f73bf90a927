"""Pages: the Jinja2 environment (autoescaped), one ``render`` for every page, and the flash
messages a redirect leaves for the next page (shown once)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from platform_core.settings import get_settings
from tenant_api.portal.sessions import PortalSession, SessionStore

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

# Pages allow only our own stylesheet and script; never framed (clickjacking).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _money(minor: int | None, currency: str = "") -> str:
    if minor is None:
        return "—"
    sign = "-" if minor < 0 else ""
    whole, cents = divmod(abs(int(minor)), 100)
    return f"{sign}{whole:,}.{cents:02d} {currency}".strip()


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def _number(value: int | None) -> str:
    return "—" if value is None else f"{int(value):,}"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["money"] = _money
    env.filters["when"] = _when
    env.filters["number"] = _number
    return env


ENVIRONMENT = _environment()


def flash(record: PortalSession, message: str, *, level: str = "info", **extra: Any) -> None:
    record.flash.append({"message": message, "level": level, **extra})


async def render(
    request: Request,
    template: str,
    *,
    status: int = 200,
    record: PortalSession | None = None,
    session_id: str | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page. ``record`` (the browser's session) gives the CSRF token for its forms and the
    flash messages left for it, which are shown here once."""
    user = getattr(request.state, "portal_user", None)
    if user is not None:
        record, session_id = user.record, user.session_id
    messages: list[dict[str, Any]] = []
    if record is not None:
        messages, record.flash = record.flash, []
        if messages and session_id:
            await SessionStore(get_settings()).save(session_id, record)
    errors = {m["field"]: m["message"] for m in messages if m.get("field")}
    values: dict[str, Any] = {}
    for m in messages:
        values.update(m.get("values") or {})
    body = ENVIRONMENT.get_template(template).render(
        request=request,
        user=user,
        csrf_token=record.csrf_token if record else "",
        messages=[m for m in messages if not m.get("field")],
        field_errors=errors,
        form_id=next((m.get("form") for m in messages if m.get("form")), None),
        values=values,
        **context,
    )
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)
