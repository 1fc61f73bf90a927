"""Tenant visibility: the one place it is decided which tenants a principal may see."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select

from platform_core.auth import Principal
from platform_core.models import Tenant


def scoped(statement: Select, principal: Principal, tenant_column: Any = Tenant.id) -> Select:  # type: ignore[type-arg]
    """Platform-wide principals (operators, org keys) see every tenant; tenant admins and
    tenant keys only their own."""
    if principal.platform_wide:
        return statement
    return statement.where(tenant_column == principal.tenant_id)
