"""usage.threshold: a tenant's usage of a meter crossing 80 % and 100 % of what its plan
includes per month, announced once per month, meter, tenant and threshold (the event's
natural id makes a second announcement impossible, whichever worker checks)."""

from __future__ import annotations

import uuid
from datetime import datetime

from platform_core import webhook_events
from platform_core.db import task_session
from tenant_api.webhooks.repository import DispatchRepository

THRESHOLDS_PERCENT = (80, 100)


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def check(now: datetime) -> int:
    """Record the thresholds crossed this month and not announced yet; how many."""
    start = month_start(now)
    period = start.strftime("%Y-%m")
    recorded = 0
    with task_session() as session:
        repo = DispatchRepository(session)
        crossed: list[tuple[str, uuid.UUID, dict[str, object]]] = []
        for tenant_id, meter, quantity, plan in repo.month_usage(start):
            price = (plan.prices or {}).get(meter) or {}
            included = int(price.get("included") or 0)
            if included <= 0:
                continue  # nothing included: no allowance to run out of
            for percent in THRESHOLDS_PERCENT:
                if quantity * 100 >= included * percent:
                    natural_id = f"usage.threshold:{tenant_id}:{period}:{meter}:{percent}"
                    crossed.append(
                        (
                            natural_id,
                            tenant_id,
                            {
                                "tenant_id": str(tenant_id),
                                "meter": meter,
                                "period": period,
                                "threshold_percent": percent,
                                "quantity": quantity,
                                "included": included,
                                "plan": plan.code,
                            },
                        )
                    )
        taken = repo.natural_ids_taken([natural_id for natural_id, _, _ in crossed])
        for natural_id, tenant_id, data in crossed:
            if natural_id in taken:
                continue
            webhook_events.record(
                session,
                webhook_events.USAGE_THRESHOLD,
                tenant_id,
                data,
                natural_id=natural_id,
                occurred_at=now,
            )
            recorded += 1
    return recorded
