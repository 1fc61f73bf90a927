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
from datetime import timedelta

import redis

from platform_core.celery import usage_check_slices
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


# A check made this long after a homeserver fell asleep saw all it will record until it
# wakes (usage on its way is applied within seconds): such a sleeper is not checked again.
SETTLED_AFTER_SLEEP = timedelta(seconds=60)


def next_slice(ctx: steps.Context) -> int | None:
    """The slice of the tenants this periodic pass checks, of
    ``usage_check_slices(C3_USAGE_RECONCILE_INTERVAL_S)``: passes take them in turn. None, all
    of them, when Redis cannot say."""
    try:
        passes = int(ctx.redis.incr(ctx.keys.usage_check_passes))
    except redis.RedisError as exc:
        log.warning("usage check: no pass count (%s); checking every tenant", type(exc).__name__)
        return None
    return (passes - 1) % usage_check_slices(ctx.settings.usage_reconcile_interval_s)


def reconcile_usage_all(ctx: steps.Context, *, slice_no: int | None = None) -> dict[str, int]:
    """Check every active tenant (with ``slice_no``, those of that slice: see ``next_slice``)
    but the sleepers already checked since they fell asleep: at 1,000 tenants the pass opened
    every homeserver's database every 5 minutes (15 s of a worker's CPU), most of them asleep
    and unchanged (docs/billing.md)."""
    report: Counter[str] = Counter()
    with task_session() as session:
        tenants = [t.id for t in repository.tenants_with_status(session, [TenantStatus.ACTIVE])]
        if slice_no is not None:
            slices = usage_check_slices(ctx.settings.usage_reconcile_interval_s)
            tenants = [t for t in tenants if t.int % slices == slice_no]
        settled = repository.sleepers_checked_since(session, SETTLED_AFTER_SLEEP, among=tenants)
    for tenant_id in tenants:
        if tenant_id in settled:
            report["skipped_asleep"] += 1
            continue
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
