"""The stored shape of a tenant's homeserver settings: the tenant API writes it
(``Tenant.homeserver_settings`` plus the encrypted ``Tenant.settings_secrets_encrypted``), the
provisioner renders it into Synapse config and the route. Absent keys mean the default.

``homeserver_settings`` (never secrets)::

    {"federation": {"mode": "allowlist", "allowed_servers": ["partner.example"]},
     "registration": "token",
     "message_retention": {"max_lifetime_days": 30},
     "max_upload_size_bytes": 10485760,
     "turn": {"uris": ["turns:turn.example:443"], "user_lifetime_s": 3600},
     "oidc": {"issuer": "https://id.example", "client_id": "c3", "display_name": "Example SSO",
              "scopes": ["openid", "profile"]}}

The secrets object: ``{"turn_shared_secret": "…", "oidc_client_secret": "…"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

# Synapse's upload cap when neither the plan nor the tenant sets one.
DEFAULT_MAX_UPLOAD_SIZE_BYTES = 50 * 1024 * 1024

TURN_SHARED_SECRET = "turn_shared_secret"
OIDC_CLIENT_SECRET = "oidc_client_secret"


class FederationMode(StrEnum):
    OFF = "off"
    ALLOWLIST = "allowlist"
    OPEN = "open"


class RegistrationPolicy(StrEnum):
    CLOSED = "closed"
    TOKEN = "token"
    OPEN = "open"


def federation_mode(settings: Mapping[str, Any]) -> FederationMode:
    federation = settings.get("federation") or {}
    return FederationMode(federation.get("mode", FederationMode.OFF.value))


def registration_policy(settings: Mapping[str, Any]) -> RegistrationPolicy:
    return RegistrationPolicy(settings.get("registration", RegistrationPolicy.CLOSED.value))


def plan_max_upload_bytes(plan_limits: Mapping[str, Any] | None) -> int:
    return int((plan_limits or {}).get("max_upload_size_bytes") or DEFAULT_MAX_UPLOAD_SIZE_BYTES)


def effective_max_upload_bytes(
    plan_limits: Mapping[str, Any] | None, settings: Mapping[str, Any]
) -> int:
    """The tenant's own cap may only lower the plan's: Synapse and the proxy both enforce the
    smaller one (a later plan downgrade below the tenant's cap wins too)."""
    plan_cap = plan_max_upload_bytes(plan_limits)
    own = settings.get("max_upload_size_bytes")
    return min(plan_cap, int(own)) if own else plan_cap
