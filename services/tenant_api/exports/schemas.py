"""Response bodies of the tenant export routes."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from platform_core.models import ExportState
from tenant_api.tenants.schemas import OperationRef


class ExportOut(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    operation_id: uuid.UUID = Field(description="The export operation (GET /v1/operations/{id})")
    state: ExportState = Field(
        description="pending → ready (downloadable until expires_at) → expired (file deleted); "
        "failed when the export operation failed (see its last_error)"
    )
    size_bytes: int | None = Field(description="Size of the archive once ready")
    sha256: str | None = Field(description="SHA-256 of the archive (hex) once ready")
    created_at: datetime
    expires_at: datetime | None = Field(description="When the download link and archive expire")
    download_url: str | None = Field(
        description="While ready: a signed link that downloads the archive (a .tar.gz) without "
        "an Authorization header until expires_at. Anyone holding it can download the tenant's "
        "data: treat it as a secret."
    )


class ExportAccepted(ExportOut):
    operation: OperationRef


class ExportList(BaseModel):
    items: list[ExportOut] = Field(description="Newest first")
