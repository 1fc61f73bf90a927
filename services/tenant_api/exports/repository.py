"""All SQL on tenant exports for the API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select

from platform_core.models import (
    ExportState,
    Operation,
    OperationState,
    Tenant,
    TenantExport,
    TenantStatus,
)
from tenant_api.kit.repository import Repository


class ExportRepository(Repository):
    def _with_operation_state(self) -> Select[Any]:
        statement = select(TenantExport, Operation.state).join(
            Operation, Operation.id == TenantExport.operation_id
        )
        return self.scoped(statement, TenantExport.tenant_id)

    async def list_for_tenant(
        self, tenant_id: uuid.UUID, *, limit: int
    ) -> list[tuple[TenantExport, OperationState]]:
        statement = (
            self._with_operation_state()
            .where(TenantExport.tenant_id == tenant_id)
            .order_by(TenantExport.created_at.desc(), TenantExport.id.desc())
            .limit(limit)
        )
        return [(export, state) for export, state in await self.session.execute(statement)]

    async def get(
        self, tenant_id: uuid.UUID, export_id: uuid.UUID
    ) -> tuple[TenantExport, OperationState] | None:
        statement = self._with_operation_state().where(
            TenantExport.tenant_id == tenant_id, TenantExport.id == export_id
        )
        row = (await self.session.execute(statement)).first()
        return (row[0], row[1]) if row is not None else None

    async def unfinished(self, tenant_id: uuid.UUID) -> tuple[TenantExport, Operation] | None:
        """The tenant's export still being made, if any (its operation pending or running)."""
        statement = (
            select(TenantExport, Operation)
            .join(Operation, Operation.id == TenantExport.operation_id)
            .where(
                TenantExport.tenant_id == tenant_id,
                TenantExport.state == ExportState.PENDING,
                Operation.state.in_([OperationState.PENDING, OperationState.RUNNING]),
            )
        )
        row = (await self.session.execute(statement)).first()
        return (row[0], row[1]) if row is not None else None

    async def ready_expiries(self, tenant_id: uuid.UUID, now: datetime) -> list[datetime]:
        """When each of the tenant's downloadable exports (ready, not expired) expires,
        soonest first: the archives it holds on disk."""
        statement = (
            select(TenantExport.expires_at)
            .where(
                TenantExport.tenant_id == tenant_id,
                TenantExport.state == ExportState.READY,
                TenantExport.expires_at > now,
            )
            .order_by(TenantExport.expires_at)
        )
        return [expires_at for expires_at in (await self.session.scalars(statement)) if expires_at]

    async def add(self, export: TenantExport) -> None:
        self.session.add(export)
        await self.session.flush()

    async def get_for_download(
        self, export_id: uuid.UUID
    ) -> tuple[TenantExport, TenantStatus] | None:
        """The export and its tenant's status. Unscoped on purpose: a download is authorised by
        the link's signature, not a principal."""
        statement = (
            select(TenantExport, Tenant.status)
            .join(Tenant, Tenant.id == TenantExport.tenant_id)
            .where(TenantExport.id == export_id)
        )
        row = (await self.session.execute(statement)).first()
        return (row[0], row[1]) if row is not None else None
