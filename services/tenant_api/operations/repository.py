"""All SQL on operations for the API."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update

from platform_core import lifecycle
from platform_core.models import Operation, OperationKind, OperationState, Tenant, utcnow
from tenant_api.kit.repository import Repository


class OperationRepository(Repository):
    async def get(self, operation_id: uuid.UUID) -> Operation | None:
        statement = (
            select(Operation)
            .join(Tenant, Tenant.id == Operation.tenant_id)
            .where(Operation.id == operation_id)
        )
        return (await self.session.scalars(self.scoped(statement))).first()

    async def start(
        self, tenant_id: uuid.UUID, kind: OperationKind, params: dict[str, Any] | None = None
    ) -> Operation:
        operation = lifecycle.start_operation(tenant_id, kind, params)
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

    async def claim_pending(self, tenant_id: uuid.UUID, kind: OperationKind) -> Operation | None:
        """The tenant's oldest operation of ``kind`` that no worker has started yet, held until
        this transaction ends: a worker cannot start it before this transaction's changes are
        committed, so it acts on them too. None if there is none (or a worker just started it).
        """
        statement = (
            select(Operation)
            .where(
                Operation.tenant_id == tenant_id,
                Operation.kind == kind,
                Operation.state == OperationState.PENDING,
            )
            .order_by(Operation.created_at, Operation.id)
            .limit(1)
            .with_for_update()  # PostgreSQL: the worker's move to running waits for our commit
        )
        operation = (await self.session.scalars(statement)).first()
        if operation is None:
            return None
        # SQLite ignores FOR UPDATE: this conditional write claims the row (and the database's
        # write lock) instead; zero rows means a worker started it since the read.
        claimed = await self.session.execute(
            update(Operation)
            .where(Operation.id == operation.id, Operation.state == OperationState.PENDING)
            .values(updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        return operation if claimed.rowcount == 1 else None  # type: ignore[attr-defined]

    async def latest_for(self, tenant_ids: list[uuid.UUID]) -> dict[uuid.UUID, Operation]:
        """Each tenant's newest operation (the portal's fleet), among those this principal sees."""
        if not tenant_ids:
            return {}
        statement = (
            select(Operation)
            .join(Tenant, Tenant.id == Operation.tenant_id)
            .where(Operation.tenant_id.in_(tenant_ids))
            .order_by(Operation.created_at.desc(), Operation.id.desc())
        )
        latest: dict[uuid.UUID, Operation] = {}
        for operation in (await self.session.scalars(self.scoped(statement))).all():
            latest.setdefault(operation.tenant_id, operation)
        return latest

    async def failed(self, *, limit: int) -> list[tuple[Operation, Tenant]]:
        """Failed operations, newest first, with their tenant (what an operator retries)."""
        statement = (
            select(Operation, Tenant)
            .join(Tenant, Tenant.id == Operation.tenant_id)
            .where(Operation.state == OperationState.FAILED)
            .order_by(Operation.updated_at.desc(), Operation.id)
            .limit(limit)
        )
        rows = await self.session.execute(self.scoped(statement))
        return [(operation, tenant) for operation, tenant in rows.tuples()]
