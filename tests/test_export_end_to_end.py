"""Tenant export end to end on real Synapse: rooms, messages and media made through the proxy
are exported by the worker, downloaded through the signed link with no credentials, and the
archive restores into a fresh Synapse that serves the same rooms, messages and media to the
same user. Expired and tampered links are refused."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from platform_core.models import utcnow
from tenant_api.exports import links
from tests.helpers.exports import (
    assert_serves_the_export,
    export_filled_tenant,
    platform_logs,
    restored_synapse,
)
from tests.helpers.platform import RunningPlatform, poll, wait_operation

pytestmark = pytest.mark.e2e


def test_an_export_restores_into_a_fresh_synapse(platform: RunningPlatform, tmp_path: Path) -> None:
    tenant = platform.create_tenant("export-src")
    exported = export_filled_tenant(platform, tenant, tmp_path)
    assert exported.manifest["database"] == {
        "engine": "sqlite3",
        "path": "database/homeserver.db",
    }

    with restored_synapse(
        exported.unpacked, tenant["server_name"], tmp_path / "restored"
    ) as restored:
        assert_serves_the_export(restored, exported)

    # The signature is a credential while the link lives: never in any log.
    sig = httpx.URL(exported.export["download_url"]).params["sig"]
    poll(
        lambda: "sig=<redacted>" in platform_logs(platform),
        timeout=10,
        what="the download in the API's access log",
    )
    assert sig not in platform_logs(platform)


def test_expired_and_tampered_links_are_refused(platform: RunningPlatform) -> None:
    tenant = platform.create_tenant("export-links")
    with platform.api() as api:
        accepted = api.post(f"/v1/tenants/{tenant['id']}/export")
        assert accepted.status_code == 202, accepted.text
        wait_operation(platform, accepted.headers["location"], timeout=120)
        export = api.get(f"/v1/tenants/{tenant['id']}/exports/{accepted.json()['id']}").json()
    link = httpx.URL(export["download_url"])
    assert httpx.get(link, timeout=30).status_code == 200

    sig = link.params["sig"]
    tampered = httpx.get(link.copy_set_param("sig", sig[::-1]), timeout=30)
    assert tampered.status_code == 404
    assert tampered.headers["content-type"].startswith("application/problem+json")
    other = httpx.get(link.copy_with(path=f"/v1/exports/{uuid.uuid4()}/download"), timeout=30)
    assert other.status_code == 404 and other.json()["detail"] == tampered.json()["detail"]

    # A genuine link (signed with the platform's key) whose expiry has passed.
    past = links.query(
        platform.env["C3_SECRET_KEY"], uuid.UUID(export["id"]), utcnow() - timedelta(minutes=1)
    )
    expired = httpx.get(link.copy_merge_params(past), timeout=30)
    assert expired.status_code == 410, expired.text
    assert "expired" in expired.json()["detail"]
