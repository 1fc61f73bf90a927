"""All SQL on operations for the API."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.auth import Principal
from platform_core.models import Operation, OperationKind, OperationState, Tenant
from tenant_api.tenants.repository import scoped


class OperationRepository:
    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.session = session
        self.principal = principal

    async def get(self, operation_id: uuid.UUID) -> Operation | None:
        statement = (
            select(Operation)
            .join(Tenant, Tenant.id == Operation.tenant_id)
            .where(Operation.id == operation_id)
        )
        return (await self.session.scalars(scoped(statement, self.principal))).first()

    async def start(
        self, tenant_id: uuid.UUID, kind: OperationKind, params: dict[str, Any] | None = None
    ) -> Operation:
        operation = Operation(
            tenant_id=tenant_id,
            kind=kind,
            state=OperationState.PENDING,
            attempts=0,
            steps_done=[],
            params=params or {},
        )
        self.session.add(operation)
        await self.session.flush()
        return operation

    async def unfinished_for(self, tenant_id: uuid.UUID, kind: OperationKind) -> Operation | None:
        statement = select(Operation).where(
            Operation.tenant_id == tenant_id,
            Operation.kind == kind,
            Operation.state.in_([OperationState.PENDING, OperationState.RUNNING]),
        )
        return (await self.session.scalars(statement)).first()
