"""A tenant's homeserver settings as the API shows and changes them. The stored shape is
platform_core.homeserver_settings (the provisioner renders it); secrets live only in
``Tenant.settings_secrets_encrypted`` and leave here as ``…_set`` flags."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from platform_core.crypto import SecretBox
from platform_core.errors import InvalidRequest
from platform_core.homeserver_settings import (
    OIDC_CLIENT_SECRET,
    TURN_SHARED_SECRET,
    FederationMode,
    RegistrationPolicy,
    federation_mode,
    plan_max_upload_bytes,
    registration_policy,
)
from platform_core.models import Tenant
from platform_core.outbound import IPNetwork, OutboundRefused, check_host_async
from tenant_api.tenants.schemas import (
    FederationOut,
    HomeserverSettingsOut,
    OidcOut,
    RetentionIn,
    TenantPatch,
    TurnOut,
)

SETTING_FIELDS = frozenset(
    {"federation", "registration", "message_retention", "max_upload_size_bytes", "turn", "oidc"}
)


def settings_out(tenant: Tenant) -> HomeserverSettingsOut:
    stored = tenant.homeserver_settings or {}
    federation = stored.get("federation") or {}
    retention = stored.get("message_retention")
    turn = stored.get("turn")
    oidc = stored.get("oidc")
    return HomeserverSettingsOut(
        federation=FederationOut(
            mode=federation_mode(stored), allowed_servers=federation.get("allowed_servers", [])
        ),
        registration=registration_policy(stored),
        message_retention=RetentionIn(**retention) if retention else None,
        max_upload_size_bytes=stored.get("max_upload_size_bytes"),
        # A secret is required whenever TURN or SSO is set up, so one is stored.
        turn=TurnOut(**turn, shared_secret_set=True) if turn else None,
        oidc=OidcOut(**oidc, client_secret_set=True) if oidc else None,
    )


def apply_patch(
    tenant: Tenant, body: TenantPatch, box: SecretBox, plan_limits: dict[str, Any]
) -> bool:
    """Write the PATCH's settings into the tenant; True if the homeserver's config changes.
    Defaults are stored as absent keys, so setting a default that is already in effect is not
    a change (and restarts nothing)."""
    given = body.model_fields_set & SETTING_FIELDS
    if not given:
        return False
    settings: dict[str, Any] = copy.deepcopy(tenant.homeserver_settings or {})
    secrets: dict[str, Any] = (
        box.decrypt_json(tenant.settings_secrets_encrypted)
        if tenant.settings_secrets_encrypted
        else {}
    )
    before = (copy.deepcopy(settings), dict(secrets))
    if "federation" in given:
        _federation(settings, body)
    if "registration" in given:
        policy = body.registration
        closed = policy is None or policy is RegistrationPolicy.CLOSED
        _set_or_drop(settings, "registration", None if closed else str(policy))
    if "message_retention" in given:
        retention = body.message_retention
        _set_or_drop(settings, "message_retention", retention.model_dump() if retention else None)
    if "max_upload_size_bytes" in given:
        _upload_cap(settings, body.max_upload_size_bytes, plan_limits)
    if "turn" in given:
        _turn(settings, secrets, body)
    if "oidc" in given:
        _oidc(settings, secrets, body)
    if (settings, secrets) == before:
        return False
    tenant.homeserver_settings = settings
    if secrets != before[1]:
        tenant.settings_secrets_encrypted = box.encrypt_json(secrets) if secrets else None
    return True


async def check_oidc_issuer(issuer: str, allowed_networks: Sequence[IPNetwork]) -> None:
    """The homeserver fetches the issuer's discovery document, keys and tokens: an issuer on
    an internal network (or a name resolving into one) would let a tenant admin make the
    platform's own network answer. Checked again whenever the provisioner renders it."""
    host = urlsplit(issuer).hostname or ""
    try:
        await check_host_async(host, allowed_networks)
    except OutboundRefused as exc:
        raise InvalidRequest(f"oidc.issuer: {exc}") from None


def _set_or_drop(settings: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        settings.pop(key, None)
    else:
        settings[key] = value


def _federation(settings: dict[str, Any], body: TenantPatch) -> None:
    federation = body.federation
    if federation is None or federation.mode is FederationMode.OFF:
        settings.pop("federation", None)
        return
    settings["federation"] = {
        "mode": federation.mode.value,
        "allowed_servers": federation.allowed_servers,
    }


def _upload_cap(settings: dict[str, Any], cap: int | None, plan_limits: dict[str, Any]) -> None:
    plan_cap = plan_max_upload_bytes(plan_limits)
    if cap is not None and cap > plan_cap:
        raise InvalidRequest(
            f"max_upload_size_bytes: {cap} exceeds the plan's upload limit of {plan_cap} bytes"
        )
    _set_or_drop(settings, "max_upload_size_bytes", cap)


def _turn(settings: dict[str, Any], secrets: dict[str, Any], body: TenantPatch) -> None:
    turn = body.turn
    if turn is None:
        settings.pop("turn", None)
        secrets.pop(TURN_SHARED_SECRET, None)
        return
    secret = turn.shared_secret or secrets.get(TURN_SHARED_SECRET)
    if not secret:
        raise InvalidRequest("turn.shared_secret: required when TURN is first set up")
    settings["turn"] = {"uris": turn.uris, "user_lifetime_s": turn.user_lifetime_s}
    secrets[TURN_SHARED_SECRET] = secret


def _oidc(settings: dict[str, Any], secrets: dict[str, Any], body: TenantPatch) -> None:
    oidc = body.oidc
    if oidc is None:
        settings.pop("oidc", None)
        secrets.pop(OIDC_CLIENT_SECRET, None)
        return
    secret = oidc.client_secret or secrets.get(OIDC_CLIENT_SECRET)
    if not secret:
        raise InvalidRequest("oidc.client_secret: required when SSO is first set up")
    settings["oidc"] = {
        "issuer": oidc.issuer,
        "client_id": oidc.client_id,
        "display_name": oidc.display_name,
        "scopes": oidc.scopes,
    }
    secrets[OIDC_CLIENT_SECRET] = secret
