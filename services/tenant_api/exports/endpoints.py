"""Tenant exports: POST /v1/tenants/{id}/export (async, 202 + operation), list and get them,
and GET /v1/exports/{id}/download — the signed, expiring link that needs no credentials.

Every route but the download needs ``tenants:write``: an export holds every message, every
media file and the homeserver's signing key, so seeing its link is worth as much as owning the
tenant (a read-only key must not get it). Tenant admins export their own tenant.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from platform_core import object_store
from platform_core.errors import NotFound
from tenant_api.deps import AuditDep, SessionDep, SettingsDep, TenantsWrite
from tenant_api.errors import PROBLEM
from tenant_api.exports import service
from tenant_api.exports.repository import ExportRepository
from tenant_api.exports.schemas import ExportAccepted, ExportList, ExportOut
from tenant_api.operations.repository import OperationRepository
from tenant_api.tenants.repository import TenantRepository
from tenant_api.tenants.schemas import OperationRef
from tenant_api.urls import absolute_url

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["exports"])


def _download_base(request: Request) -> Callable[[uuid.UUID], str]:
    return lambda export_id: absolute_url(request, "exports.download", export_id=export_id)


@router.post(
    "/tenants/{tenant_id}/export",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExportAccepted,
    responses={
        429: {
            "content": {PROBLEM: {}},
            "description": "The tenant already holds C3_EXPORTS_PER_TENANT_MAX downloadable "
            "exports; Retry-After says when the oldest expires",
        }
    },
    name="exports.create",
)
async def export_tenant(
    tenant_id: uuid.UUID,
    request: Request,
    response: Response,
    session: SessionDep,
    principal: TenantsWrite,
    settings: SettingsDep,
    audit: AuditDep,
) -> ExportAccepted:
    """Make a downloadable archive of the tenant's homeserver: database dump, media, signing
    key, config (the platform's operating secrets removed) and a manifest with every file's
    SHA-256. Active or suspended tenants only. While an export is being made, asking again
    returns it instead of starting another. A tenant holds at most `C3_EXPORTS_PER_TENANT_MAX`
    downloadable exports (default 5); one more answers 429 with `Retry-After` until the oldest
    expires."""
    # Locked until commit: two concurrent requests cannot both pass the cap.
    tenant = await TenantRepository(session, principal).get_or_404(tenant_id, for_update=True)
    export, operation = await service.start_export(
        tenant,
        ExportRepository(session, principal),
        OperationRepository(session, principal),
        audit,
        max_kept=settings.exports_per_tenant_max,
    )
    operation_state = operation.state
    url = absolute_url(request, "operations.get", operation_id=operation.id)
    response.headers["Location"] = url
    out = service.to_out(
        export, operation_state, settings.require_secret_key(), _download_base(request)
    )
    return ExportAccepted(**out.model_dump(), operation=OperationRef(id=operation.id, url=url))


@router.get("/tenants/{tenant_id}/exports", response_model=ExportList, name="exports.list")
async def list_exports(
    tenant_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    principal: TenantsWrite,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ExportList:
    tenant = await TenantRepository(session, principal).get_or_404(tenant_id)
    rows = await ExportRepository(session, principal).list_for_tenant(tenant.id, limit=limit)
    key, base = settings.require_secret_key(), _download_base(request)
    return ExportList(items=[service.to_out(e, state, key, base) for e, state in rows])


@router.get(
    "/tenants/{tenant_id}/exports/{export_id}", response_model=ExportOut, name="exports.get"
)
async def get_export(
    tenant_id: uuid.UUID,
    export_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    principal: TenantsWrite,
    settings: SettingsDep,
) -> ExportOut:
    found = await ExportRepository(session, principal).get(tenant_id, export_id)
    if found is None:
        raise NotFound(f"export {export_id} not found")
    export, operation_state = found
    return service.to_out(
        export, operation_state, settings.require_secret_key(), _download_base(request)
    )


_PROBLEM_BODY: dict[str, Any] = {"content": {PROBLEM: {}}}
_CHUNK = 256 * 1024


@router.get(
    "/exports/{export_id}/download",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/gzip": {}}, "description": "The archive (.tar.gz)"},
        307: {
            "description": "With an object store (C3_OBJECT_STORE_URL): a redirect to the "
            "archive's presigned URL, valid until the export expires"
        },
        404: {**_PROBLEM_BODY, "description": "No export at this link (or a bad signature)"},
        410: {**_PROBLEM_BODY, "description": "The link expired, or the archive is gone"},
    },
    name="exports.download",
)
async def download_export(
    export_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    expires: Annotated[int, Query(ge=0, le=2**40, description="Expiry (Unix seconds)")],
    sig: Annotated[str, Query(max_length=256, description="The link's signature")],
) -> Response:
    """Download an export's archive. Authorised by the link's signature alone (no
    Authorization header): the `download_url` of a ready export. With an object store the
    answer is a redirect to the archive's presigned URL (follow redirects)."""
    found = await ExportRepository(session).get_for_download(export_id)
    export = service.downloadable(found, export_id, expires, sig, settings.require_secret_key())
    store = object_store.from_settings(settings)
    download = await run_in_threadpool(service.open_download, store, export)
    log.info("export %s of tenant %s downloaded", export.id, export.tenant_id)
    no_store = {"Cache-Control": "private, no-store"}
    if download.url is not None:
        return RedirectResponse(download.url, status_code=307, headers=no_store)
    assert download.stream is not None
    return StreamingResponse(
        iterate_in_threadpool(_chunks(download.stream)),
        media_type="application/gzip",
        headers={
            **no_store,
            "Content-Length": str(download.size),
            "Content-Disposition": f'attachment; filename="{download.filename}"',
        },
    )


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(_CHUNK):
            yield chunk
