"""ORM models of the platform database (one Alembic history in migrations/)."""

from platform_core.models.auth import (
    Account,
    AccountRole,
    ApiKey,
    AuditEvent,
    IdempotentRequest,
    RefreshToken,
)
from platform_core.models.base import Base, UTCDateTime, utcnow
from platform_core.models.billing import Invoice, InvoiceCounter, InvoiceLine, InvoiceStatus
from platform_core.models.tenancy import (
    ExportState,
    Homeserver,
    HomeserverDesiredState,
    Operation,
    OperationKind,
    OperationState,
    Plan,
    Tenant,
    TenantExport,
    TenantPlanChange,
    TenantStatus,
)
from platform_core.models.usage import (
    BillableEvent,
    Meter,
    UsageBatch,
    UsageCounter,
    UsageReconciliation,
)

__all__ = [
    "Account",
    "AccountRole",
    "ApiKey",
    "AuditEvent",
    "IdempotentRequest",
    "RefreshToken",
    "Base",
    "BillableEvent",
    "ExportState",
    "Homeserver",
    "Invoice",
    "InvoiceCounter",
    "InvoiceLine",
    "InvoiceStatus",
    "HomeserverDesiredState",
    "Meter",
    "Operation",
    "OperationKind",
    "OperationState",
    "Plan",
    "Tenant",
    "TenantExport",
    "TenantPlanChange",
    "TenantStatus",
    "UTCDateTime",
    "UsageBatch",
    "UsageCounter",
    "UsageReconciliation",
    "utcnow",
]
