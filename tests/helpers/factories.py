"""Small factories for database rows used by tests."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from platform_core.db import task_session
from platform_core.models import Plan, Tenant, TenantStatus


def make_tenant(status: TenantStatus = TenantStatus.ACTIVE) -> uuid.UUID:
    slug = f"t{uuid.uuid4().hex[:12]}"
    with task_session() as session:
        plan = session.scalars(select(Plan).where(Plan.is_default.is_(True))).one()
        tenant = Tenant(
            slug=slug,
            display_name=slug,
            server_name=f"{slug}.c3.test",
            status=status,
            plan_id=plan.id,
        )
        session.add(tenant)
        session.flush()
        return tenant.id
