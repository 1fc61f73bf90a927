"""Tenant exports over REST (no worker here: a ready export is prepared as the worker would
leave it): starting one, listing, the signed download link without credentials, expiry."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from platform_core import object_store
from platform_core.db import task_session
from platform_core.models import (
    AuditEvent,
    ExportState,
    Operation,
    OperationState,
    TenantExport,
    utcnow,
)
from platform_core.object_store import export_key
from platform_core.settings import get_settings
from tenant_api.main import create_app
from tests.helpers.api import active_tenant, assert_problem, slug
from tests.helpers.object_store import SECRET_ACCESS_KEY, S3Server

ARCHIVE = b"\x1f\x8b pretend this is a tar.gz"


@pytest.fixture
async def anonymous(platform_env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no Authorization header at all (a browser following a link)."""
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


def finish(export_id: str, *, expires_in: timedelta = timedelta(hours=1)) -> str:
    """What the export task leaves behind: an archive in the platform's object store (the
    data directory, or S3 when C3_OBJECT_STORE_URL is set) and a ready row; returns its key."""
    settings = get_settings()
    key = export_key(uuid.UUID(export_id))
    source = settings.data_path / f"upload-{export_id}"
    source.write_bytes(ARCHIVE)
    object_store.from_settings(settings).put_file(key, source)
    source.unlink()
    with task_session() as session:
        row = session.get(TenantExport, uuid.UUID(export_id))
        assert row is not None
        row.state, row.path, row.size_bytes = ExportState.READY, key, len(ARCHIVE)
        row.sha256 = hashlib.sha256(ARCHIVE).hexdigest()
        row.expires_at = utcnow() + expires_in
    return key


async def test_an_export_is_an_operation_and_asking_again_returns_the_one_under_way(
    api: httpx.AsyncClient,
) -> None:
    tenant = await active_tenant(api)
    first = await api.post(f"/v1/tenants/{tenant['id']}/export")
    assert first.status_code == 202, first.text
    export = first.json()
    assert export["state"] == "pending" and export["download_url"] is None
    assert export["tenant_id"] == tenant["id"]
    assert first.headers["location"] == export["operation"]["url"]
    operation = (await api.get(export["operation"]["url"])).json()
    assert operation["kind"] == "export" and operation["id"] == export["operation_id"]

    again = await api.post(f"/v1/tenants/{tenant['id']}/export")
    assert again.status_code == 202 and again.json()["id"] == export["id"]
    listed = (await api.get(f"/v1/tenants/{tenant['id']}/exports")).json()["items"]
    assert [e["id"] for e in listed] == [export["id"]]
    one = await api.get(f"/v1/tenants/{tenant['id']}/exports/{export['id']}")
    assert one.status_code == 200 and one.json()["state"] == "pending"
    with task_session() as session:
        audited = session.scalars(
            select(AuditEvent).where(AuditEvent.target_id == export["id"])
        ).all()
    assert [e.action for e in audited] == ["tenant.export"]  # the repeat started nothing


async def test_only_an_active_or_suspended_tenant_can_be_exported(api: httpx.AsyncClient) -> None:
    tenant = (await api.post("/v1/tenants", json={"slug": slug(), "display_name": "P"})).json()
    assert_problem(await api.post(f"/v1/tenants/{tenant['id']}/export"), 409, "active or suspended")
    assert (await api.get(f"/v1/tenants/{tenant['id']}/exports")).json()["items"] == []


async def test_a_ready_export_downloads_without_credentials_until_it_expires(
    api: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    tenant = await active_tenant(api)
    export = (await api.post(f"/v1/tenants/{tenant['id']}/export")).json()
    finish(export["id"])
    ready = (await api.get(f"/v1/tenants/{tenant['id']}/exports/{export['id']}")).json()
    assert ready["state"] == "ready" and ready["size_bytes"] == len(ARCHIVE)
    link = httpx.URL(ready["download_url"])
    assert link.path == f"/v1/exports/{export['id']}/download"

    download = await anonymous.get(link)
    assert download.status_code == 200, download.text
    assert download.content == ARCHIVE
    assert download.headers["content-type"] == "application/gzip"
    assert download.headers["content-disposition"].startswith("attachment;")
    assert download.headers["cache-control"] == "private, no-store"

    sig = link.params["sig"]
    tampered = link.copy_set_param("sig", sig[:-1] + ("0" if sig[-1] != "0" else "1"))
    bad = assert_problem(await anonymous.get(tampered), 404)
    unknown = link.copy_with(path=f"/v1/exports/{uuid.uuid4()}/download")
    assert assert_problem(await anonymous.get(unknown), 404)["detail"] == bad["detail"]
    stretched = link.copy_set_param("expires", str(int(link.params["expires"]) + 3600))
    assert_problem(await anonymous.get(stretched), 404)

    with task_session() as session:
        row = session.get(TenantExport, uuid.UUID(export["id"]))
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
    assert_problem(await anonymous.get(link), 410, "expired")
    shown = (await api.get(f"/v1/tenants/{tenant['id']}/exports/{export['id']}")).json()
    assert shown["state"] == "expired" and shown["download_url"] is None


async def test_with_an_object_store_the_link_redirects_to_a_presigned_url(
    api: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    s3_server: S3Server,
    tuned_settings: Callable[..., None],
) -> None:
    """C3_OBJECT_STORE_URL set: the same signed link answers 307 to the archive's presigned
    URL (no credentials needed there either, valid until the export expires); expired, or
    gone from the bucket, it is 410 as before."""
    bucket = s3_server.bucket(prefix="api-test")
    tuned_settings(**s3_server.env(bucket))
    tenant = await active_tenant(api)
    export = (await api.post(f"/v1/tenants/{tenant['id']}/export")).json()
    key = finish(export["id"])
    assert bucket.exists(key)  # the bucket, not the data directory, holds it
    assert not (get_settings().data_path / key).exists()
    ready = (await api.get(f"/v1/tenants/{tenant['id']}/exports/{export['id']}")).json()
    link = httpx.URL(ready["download_url"])

    answer = await anonymous.get(link)
    assert answer.status_code == 307, answer.text
    assert answer.headers["cache-control"] == "private, no-store"
    presigned = httpx.URL(answer.headers["location"])
    assert presigned.host == "127.0.0.1" and "X-Amz-Signature" in presigned.params
    assert presigned.path.endswith(f"/api-test/{key}")
    ttl = int(presigned.params["X-Amz-Expires"])
    assert 3500 <= ttl <= 3600  # as long as the export lives: one hour here
    async with httpx.AsyncClient(timeout=30) as plain:  # no Authorization header
        got = await plain.get(presigned)
    assert got.status_code == 200 and got.content == ARCHIVE
    assert hashlib.sha256(got.content).hexdigest() == ready["sha256"]
    assert "attachment" in got.headers["content-disposition"]
    assert SECRET_ACCESS_KEY not in answer.headers["location"]

    bucket.delete(key)  # cleaned up behind the API's back
    assert_problem(await anonymous.get(link), 410, "cleaned up")
    with task_session() as session:
        row = session.get(TenantExport, uuid.UUID(export["id"]))
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
    assert_problem(await anonymous.get(link), 410, "expired")


async def test_a_failed_export_shows_as_failed_and_a_new_one_can_start(
    api: httpx.AsyncClient,
) -> None:
    tenant = await active_tenant(api)
    export = (await api.post(f"/v1/tenants/{tenant['id']}/export")).json()
    with task_session() as session:
        operation = session.get(Operation, uuid.UUID(export["operation_id"]))
        assert operation is not None
        operation.state = OperationState.FAILED
    shown = (await api.get(f"/v1/tenants/{tenant['id']}/exports/{export['id']}")).json()
    assert shown["state"] == "failed"
    retry = await api.post(f"/v1/tenants/{tenant['id']}/export")
    assert retry.status_code == 202 and retry.json()["id"] != export["id"]


async def test_an_export_of_another_tenant_is_not_found_under_this_one(
    api: httpx.AsyncClient,
) -> None:
    mine, other = await active_tenant(api), await active_tenant(api)
    export = (await api.post(f"/v1/tenants/{other['id']}/export")).json()
    assert_problem(await api.get(f"/v1/tenants/{mine['id']}/exports/{export['id']}"), 404)


async def test_a_tenant_holds_at_most_the_configured_number_of_exports(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each export is a full copy of the tenant's data on disk: past C3_EXPORTS_PER_TENANT_MAX
    downloadable ones, a new export is refused (429, Retry-After = when the oldest expires)."""
    monkeypatch.setenv("C3_EXPORTS_PER_TENANT_MAX", "3")
    get_settings.cache_clear()
    try:
        tenant = await active_tenant(api)
        url = f"/v1/tenants/{tenant['id']}/export"
        for hours in (2, 1, 3):
            started = await api.post(url)
            assert started.status_code == 202, started.text
            finish(started.json()["id"], expires_in=timedelta(hours=hours))
        refused = await api.post(url)
        problem = assert_problem(refused, 429, "already has 3 downloadable exports", "(3)")
        assert "download one of them" in problem["detail"]
        assert 3500 <= int(refused.headers["retry-after"]) <= 3600  # the one expiring in 1 h
        listed = (await api.get(f"/v1/tenants/{tenant['id']}/exports")).json()["items"]
        assert len(listed) == 3  # nothing was started

        # Expired exports hold nothing: once one expires, a new export starts.
        with task_session() as session:
            oldest = session.scalars(
                select(TenantExport)
                .where(TenantExport.tenant_id == uuid.UUID(tenant["id"]))
                .order_by(TenantExport.expires_at)
            ).first()
            assert oldest is not None
            oldest.expires_at = utcnow() - timedelta(seconds=1)
        assert (await api.post(url)).status_code == 202
    finally:
        get_settings.cache_clear()
