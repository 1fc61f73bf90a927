"""All SQL behind the platform gauges: counts by state over the whole platform."""

from __future__ import annotations

from sqlalchemy import func, select

from platform_core.models import Homeserver, Operation, OperationState, Tenant, TenantStatus
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

    async def homeservers_by_state(self) -> dict[str, int]:
        """Homeservers of active tenants, awake or asleep; of suspended ones, stopped (every
        state, zero included)."""
        asleep = Homeserver.asleep_since.is_not(None)
        rows = await self.session.execute(
            select(Tenant.status, asleep, func.count())
            .join(Homeserver, Homeserver.tenant_id == Tenant.id)
            .where(Tenant.status.in_([TenantStatus.ACTIVE, TenantStatus.SUSPENDED]))
            .group_by(Tenant.status, asleep)
        )
        counts = dict.fromkeys(("awake", "asleep", "stopped"), 0)
        for status, is_asleep, count in rows:
            if TenantStatus(status) is TenantStatus.SUSPENDED:
                counts["stopped"] += int(count)
            else:
                counts["asleep" if is_asleep else "awake"] += int(count)
        return counts
