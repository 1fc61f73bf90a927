"""The homeserver settings form as the API's ``TenantPatch``: what the form shows is what is
saved (an empty retention means forever, an empty SSO issuer turns SSO off). Field names are
the API's paths (``federation.mode``), so a refused value's problem detail lands beside it."""

from __future__ import annotations

import re
from typing import Any

from tenant_api.portal.routing import validated
from tenant_api.tenants.schemas import TenantPatch


def _servers(raw: str) -> list[str]:
    return [name for name in re.split(r"[\s,]+", raw) if name]


def _retention(form: dict[str, str]) -> dict[str, Any] | None:
    days = form.get("message_retention.max_lifetime_days", "").strip()
    return {"max_lifetime_days": days} if days else None


def _oidc(form: dict[str, str]) -> dict[str, Any] | None:
    issuer = form.get("oidc.issuer", "").strip()
    if not issuer:
        return None
    oidc: dict[str, Any] = {
        "issuer": issuer,
        "client_id": form.get("oidc.client_id", "").strip(),
        "display_name": form.get("oidc.display_name", "").strip() or None,
    }
    scopes = form.get("oidc.scopes", "").split()
    if scopes:  # the form shows the current scopes: saving it keeps them
        oidc["scopes"] = scopes
    secret = form.get("oidc.client_secret", "")
    if secret:  # write-only: kept when left empty
        oidc["client_secret"] = secret
    return oidc


def patch_from_form(form: dict[str, str]) -> TenantPatch:
    mode = form.get("federation.mode", "off")
    data: dict[str, Any] = {
        "federation": {
            "mode": mode,
            "allowed_servers": _servers(form.get("federation.allowed_servers", "")),
        },
        "registration": form.get("registration", "closed"),
        "message_retention": _retention(form),
        "oidc": _oidc(form),
    }
    return validated(TenantPatch, data)
