"""Operation rules: what follows an operator's retry of a failed operation. Never commits — the
request boundary does."""

from __future__ import annotations

from platform_core.models import Operation
from tenant_api.kit.audit import AuditContext


def accept_retry(audit: AuditContext, operation: Operation) -> None:
    """The operation was moved back to pending for another run: audit who asked for it."""
    audit.record(
        "operation.retry",
        "operation",
        operation.id,
        tenant_id=operation.tenant_id,
        details={"kind": operation.kind.value, "last_error": operation.last_error},
    )
