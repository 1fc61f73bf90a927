"""Compare what we bill with what each homeserver itself recorded, and store the drift.

Billed ``messages`` and ``media_bytes`` (the ledger) are compared with the homeserver's own
database (timeline events, local media). Drift = homeserver − billed: positive means usage
went unbilled (e.g. a proxy killed with ``kill -9`` lost its last unflushed second), negative
would mean billing without a homeserver record. While traffic flows, a check can catch up to
about two seconds of usage still on its way (flush interval + consumer tick): only a drift
that persists across checks is real.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter

from platform_core.db import task_session
from platform_core.models import TenantStatus, utcnow
from provisioner import repository, steps

log = logging.getLogger(__name__)

RECONCILED_METERS = ("messages", "media_bytes")


def reconcile_tenant_usage(ctx: steps.Context, tenant_id: uuid.UUID) -> dict[str, int] | None:
    """One check of one tenant; returns the drift per meter (None: no homeserver data)."""
    observed_at = utcnow()  # before reading: billed can only have grown since
    counts = ctx.backend.usage_counts(str(tenant_id))
    if counts is None:
        return None
    with task_session() as session:
        billed = repository.billed_totals(session, tenant_id, RECONCILED_METERS)
        drift = {}
        for meter in RECONCILED_METERS:
            row = repository.record_reconciliation(
                session, tenant_id, meter, billed[meter], counts[meter], observed_at
            )
            drift[meter] = row.drift
    if any(drift.values()):
        log.warning("usage drift for tenant %s (homeserver − billed): %s", tenant_id, drift)
    return drift


def reconcile_usage_all(ctx: steps.Context) -> dict[str, int]:
    report: Counter[str] = Counter()
    with task_session() as session:
        tenants = [t.id for t in repository.tenants_with_status(session, [TenantStatus.ACTIVE])]
    for tenant_id in tenants:
        try:
            drift = reconcile_tenant_usage(ctx, tenant_id)
        except Exception:  # noqa: BLE001 — one tenant's trouble must not stop the others
            log.warning("usage reconciliation of tenant %s failed", tenant_id, exc_info=True)
            report["errors"] += 1
            continue
        report["checked" if drift is not None else "no_data"] += 1
        if drift and any(drift.values()):
            report["drifting"] += 1
    return dict(report)
