"""No secret ever appears in a log line: after the end-to-end runs (this module sorts after
them), every log the platform and its homeservers wrote is scanned for every secret the
platform holds. Runs against the session's real platform."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from platform_core.crypto import SecretBox
from platform_core.db import driver_url
from platform_core.models import Homeserver, Tenant, TenantStatus
from tests.helpers.exports import PASSWORD, login
from tests.helpers.platform import RunningPlatform

pytestmark = pytest.mark.e2e

# Passwords the end-to-end tests give users (test_end_to_end, test_billing_…, test_lifecycle_…,
# test_tenant_postgres_…).
KNOWN_PASSWORDS = (
    "alice-secret-1",
    "bob-secret-12",
    "clerk-secret-1",
    "rush-secret-12",
    "sam-secret-123",
    "pat-secret-123",
    "cy-secret-1234",
    "ann-secret-123",
    "ann-new-secret-9",
    "ben-secret-123",
    "dee-secret-123",
    "hana-secret-12",  # test_homeserver_settings_end_to_end
    "reg-secret-123",
    "pia-secret-123",
    "kim-secret-123",
    "eve-secret-1234",  # also this module's own user, when it runs alone
    "recon-admin-pw-1",
)


def platform_secrets(platform: RunningPlatform) -> dict[str, str]:
    found = {
        "operator token": platform.token,
        "secret key": platform.env["C3_SECRET_KEY"],
    }
    if platform.env.get("C3_OBJECT_STORE_SECRET_ACCESS_KEY"):
        found["object store secret"] = platform.env["C3_OBJECT_STORE_SECRET_ACCESS_KEY"]
    for password in KNOWN_PASSWORDS:
        found[f"user password {password}"] = password
    box = SecretBox(platform.env["C3_SECRET_KEY"])
    engine = create_engine(driver_url(platform.env["C3_DATABASE_URL"], asynchronous=False))
    with Session(engine) as session:
        for hs in session.scalars(select(Homeserver)):
            if hs.admin_token_encrypted:
                found[f"admin token of {hs.tenant_id}"] = box.decrypt(hs.admin_token_encrypted)
        for tenant in session.scalars(select(Tenant)):  # TURN shared secret, OIDC client secret
            if tenant.settings_secrets_encrypted:
                for name, value in box.decrypt_json(tenant.settings_secrets_encrypted).items():
                    found[f"{name} of {tenant.id}"] = str(value)
            signs_up_by_token = (tenant.homeserver_settings or {}).get("registration") == "token"
            if tenant.status is TenantStatus.ACTIVE and signs_up_by_token:
                found.update(live_registration_tokens(platform, str(tenant.id)))
    engine.dispose()
    local_secrets = platform.data_dir / "local-secrets.json"  # the embedded Redis's password
    if local_secrets.exists():
        for name, value in json.loads(local_secrets.read_text()).items():
            found[f"local secret {name}"] = value
    for config in (platform.data_dir / "homeservers").glob("*/homeserver.yaml"):
        values = yaml.safe_load(config.read_text())
        for name in ("registration_shared_secret", "macaroon_secret_key", "form_secret"):
            found[f"{name} of {config.parent.name}"] = values[name]
    return found


def live_registration_tokens(platform: RunningPlatform, tenant_id: str) -> dict[str, str]:
    """Registration tokens that still let someone sign up (a revoked one is no secret)."""
    with platform.api() as api:
        listed = api.get(f"/v1/tenants/{tenant_id}/registration-tokens", params={"valid": "true"})
    assert listed.status_code == 200, listed.text
    tokens = [t["token"] for t in listed.json()["items"]]
    return {f"registration token {n} of {tenant_id}": token for n, token in enumerate(tokens)}


def logs(platform: RunningPlatform) -> list[Path]:
    files = [platform.log_path, *sorted((platform.data_dir / "logs").glob("*.log"))]
    files += sorted((platform.data_dir / "homeservers").glob("*/*.log"))
    return [f for f in files if f.is_file()]


def provision_one(platform: RunningPlatform) -> None:
    """Run alone (no end-to-end test before it), the scan would have no tenant's secrets to look
    for: provision one, give it a user and sign that user in through the proxy, so an admin
    token, a homeserver's keys and a password have all passed through the logs' writers."""
    tenant = platform.create_tenant("log-scan")
    user_id = platform.create_user(tenant["id"], "scanner", PASSWORD)
    signed_in = login(f"{platform.proxy_url}/t/log-scan", user_id)
    assert signed_in.status_code == 200, signed_in.text


def test_no_secret_appears_in_any_log(platform: RunningPlatform) -> None:
    secrets = platform_secrets(platform)
    if not any(name.startswith("admin token") for name in secrets):  # run alone
        provision_one(platform)
        secrets = platform_secrets(platform)
    assert any(name.startswith("admin token") for name in secrets)  # tenants were provisioned
    files = logs(platform)
    assert len(files) >= 5
    leaks = []
    for path in files:
        text = path.read_text(errors="replace")
        for name, value in secrets.items():
            if value and value in text:
                leaks.append(f"{name} in {path.name}")
    assert not leaks, leaks
