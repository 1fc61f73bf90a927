"""Export rules: who can be exported, what a client sees of an export, which links download.
Never commits — the request boundary does."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from platform_core import object_store
from platform_core.celery import TaskNames
from platform_core.errors import C3Error, Conflict, NotFound, TooManyRequests
from platform_core.models import (
    ExportState,
    Operation,
    OperationKind,
    OperationState,
    Tenant,
    TenantExport,
    TenantStatus,
    utcnow,
)
from platform_core.object_store import ObjectStore
from tenant_api.exports import links
from tenant_api.exports.repository import ExportRepository
from tenant_api.exports.schemas import ExportOut
from tenant_api.kit import tasks
from tenant_api.kit.audit import AuditContext
from tenant_api.operations.repository import OperationRepository

EXPORTABLE = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED)


class Gone(C3Error):
    """A genuine download link past its expiry (or an export already cleaned up)."""

    status = 410
    title = "Gone"
    type_slug = "gone"


async def start_export(
    tenant: Tenant,
    exports: ExportRepository,
    operations: OperationRepository,
    audit: AuditContext,
    *,
    max_kept: int,
) -> tuple[TenantExport, Operation]:
    """A new export (and its operation), or the one still being made: asking twice while an
    export runs does not make two archives; a new one is audited and its task sent after
    commit. Each archive is a full copy of the tenant's data until its link expires, so a
    tenant holds at most ``max_kept`` (the new one included); one more is refused until the
    oldest expires."""
    running = await exports.unfinished(tenant.id)
    if running is not None:
        return running[0], running[1]
    if tenant.status not in EXPORTABLE:
        raise Conflict(
            f"only an active or suspended tenant can be exported (this one is {tenant.status.value})"
        )
    now = utcnow()
    kept = await exports.ready_expiries(tenant.id, now)
    if len(kept) >= max_kept:
        oldest = kept[len(kept) - max_kept]  # once it expires, one more fits
        wait_s = max(1, math.ceil((oldest - now).total_seconds()))
        raise TooManyRequests(
            f"this tenant already has {len(kept)} downloadable exports, the most the platform "
            f"keeps per tenant ({max_kept}); download one of them (GET "
            f"/v1/tenants/{tenant.id}/exports) or start a new one after the oldest expires at "
            f"{oldest.isoformat(timespec='seconds')}",
            retry_after=wait_s,
        )
    operation = await operations.start(tenant.id, OperationKind.EXPORT)
    export = TenantExport(tenant_id=tenant.id, operation_id=operation.id, state=ExportState.PENDING)
    await exports.add(export)
    audit.record("tenant.export", "tenant_export", export.id, tenant_id=tenant.id)
    tasks.enqueue(exports.session, TaskNames.EXPORT_TENANT, operation.id)
    return export, operation


def visible_state(export: TenantExport, operation_state: OperationState) -> ExportState:
    """What the client is told: an export whose operation gave up is failed, and a ready one
    past its expiry is expired, even before the clean-up task has recorded either."""
    if export.state is ExportState.PENDING and operation_state is OperationState.FAILED:
        return ExportState.FAILED
    if export.state is ExportState.READY and export.expires_at and export.expires_at <= utcnow():
        return ExportState.EXPIRED
    return export.state


def to_out(
    export: TenantExport,
    operation_state: OperationState,
    secret_key: str,
    download_base: Callable[[uuid.UUID], str],
) -> ExportOut:
    state = visible_state(export, operation_state)
    url = None
    if state is ExportState.READY and export.expires_at is not None:
        query = links.query(secret_key, export.id, export.expires_at)
        url = f"{download_base(export.id)}?expires={query['expires']}&sig={query['sig']}"
    return ExportOut(
        id=export.id,
        tenant_id=export.tenant_id,
        operation_id=export.operation_id,
        state=state,
        size_bytes=export.size_bytes,
        sha256=export.sha256,
        created_at=export.created_at,
        expires_at=export.expires_at,
        download_url=url,
    )


_NO_LINK = "no export download at this link"


@dataclass(frozen=True)
class Download:
    """How an archive reaches the client: a redirect to the store's own presigned URL (S3),
    or its bytes streamed from the store (the data directory)."""

    filename: str
    size: int
    url: str | None = None
    stream: IO[bytes] | None = None


def downloadable(
    found: tuple[TenantExport, TenantStatus] | None,
    export_id: uuid.UUID,
    expires: int,
    sig: str,
    secret_key: str,
) -> TenantExport:
    """The export a download link points at. A wrong signature and an unknown export look the
    same (404); a genuine link past its expiry is 410, and so is one of a deleted tenant (its
    data must not outlive it)."""
    if not links.is_valid(secret_key, export_id, expires, sig) or found is None:
        raise NotFound(_NO_LINK)
    export, tenant_status = found
    if expires <= time.time() or export.state is ExportState.EXPIRED:
        raise Gone("this download link has expired; start a new export")
    if tenant_status in (TenantStatus.DELETING, TenantStatus.DELETED):
        raise Gone("this tenant was deleted, and its exports with it")
    if export.expires_at is not None and export.expires_at <= utcnow():
        raise Gone("this download link has expired; start a new export")
    if export.state is not ExportState.READY or export.path is None or export.expires_at is None:
        raise NotFound(_NO_LINK)
    return export


def open_download(store: ObjectStore, export: TenantExport) -> Download:
    """The archive of a downloadable export (blocking I/O: call it in a worker thread). An
    archive the store no longer holds (cleaned up) is 410. A presigned URL lives until the
    export expires, as long as the link that led to it."""
    key = object_store.export_key(export.id)
    stored = store.stat(key)
    if stored is None:
        raise Gone("this export's archive was cleaned up; start a new export")
    stamp = export.created_at.strftime("%Y%m%dT%H%M%SZ")
    filename = f"c3-export-{export.tenant_id}-{stamp}.tar.gz"
    expires_at = export.expires_at or utcnow()  # set on every ready export (downloadable)
    ttl_s = math.ceil((expires_at - utcnow()).total_seconds())
    url = store.download_url(key, ttl_s, filename)
    if url is not None:
        return Download(filename, stored.size, url=url)
    try:
        return Download(filename, stored.size, stream=store.open(key))
    except FileNotFoundError:
        raise Gone("this export's archive was cleaned up; start a new export") from None
