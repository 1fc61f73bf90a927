"""All SQL behind the platform gauges: counts by state over the whole platform."""

from __future__ import annotations

from sqlalchemy import func, select

from platform_core.models import Operation, OperationState, Tenant, TenantStatus
from tenant_api.kit.repository import Repository


class MetricsRepository(Repository):
    """Unscoped: the gauges count the whole platform."""

    async def tenants_by_status(self) -> dict[str, int]:
        """Every status, zero included (a series that vanishes at zero breaks alerts)."""
        rows = await self.session.execute(
            select(Tenant.status, func.count()).group_by(Tenant.status)
        )
        found = {TenantStatus(status).value: int(count) for status, count in rows}
        return {status.value: found.get(status.value, 0) for status in TenantStatus}

    async def operations_by_state(self) -> dict[str, int]:
        rows = await self.session.execute(
            select(Operation.state, func.count()).group_by(Operation.state)
        )
        found = {OperationState(state).value: int(count) for state, count in rows}
        return {state.value: found.get(state.value, 0) for state in OperationState}
