"""ORM models of the platform database (one Alembic history in migrations/)."""

from platform_core.models.base import Base, UTCDateTime, utcnow
from platform_core.models.tenancy import (
    Homeserver,
    HomeserverDesiredState,
    Operation,
    OperationKind,
    OperationState,
    Plan,
    Tenant,
    TenantStatus,
)
from platform_core.models.usage import BillableEvent, Meter, UsageBatch, UsageCounter

__all__ = [
    "Base",
    "BillableEvent",
    "Homeserver",
    "HomeserverDesiredState",
    "Meter",
    "Operation",
    "OperationKind",
    "OperationState",
    "Plan",
    "Tenant",
    "TenantStatus",
    "UTCDateTime",
    "UsageBatch",
    "UsageCounter",
    "utcnow",
]
