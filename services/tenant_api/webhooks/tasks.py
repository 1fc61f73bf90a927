"""The webhook Celery tasks: the dispatcher beat (fan out new events, enqueue due deliveries:
also the sweeper that re-enqueues a delivery whose worker died mid-send), one delivery
attempt per task, the usage threshold check, and the retention sweep."""

from __future__ import annotations

import logging
import uuid

from platform_core.celery import TaskNames, celery_app, send_task
from platform_core.models import utcnow
from platform_core.settings import get_settings
from tenant_api.webhooks import dispatch, retention, thresholds

log = logging.getLogger(__name__)
app = celery_app()


@app.task(name=TaskNames.DISPATCH_WEBHOOKS, acks_late=True, ignore_result=True)
def dispatch_webhooks() -> dict[str, int]:
    settings = get_settings()
    now = utcnow()
    created = dispatch.collect(now)
    due = dispatch.due(now, settings)
    for delivery_id in [*created, *due]:
        # A message lost here is found again by a later run once its enqueue mark lapses.
        send_task(TaskNames.DELIVER_WEBHOOK, str(delivery_id))
    return {"created": len(created), "due": len(due)}


@app.task(name=TaskNames.DELIVER_WEBHOOK, acks_late=True, ignore_result=True)
def deliver_webhook(delivery_id: str) -> str:
    return dispatch.deliver(uuid.UUID(delivery_id), get_settings())


@app.task(name=TaskNames.CHECK_USAGE_THRESHOLDS, acks_late=True, ignore_result=True)
def check_usage_thresholds() -> int:
    return thresholds.check(utcnow())


@app.task(name=TaskNames.PRUNE_WEBHOOKS, acks_late=True, ignore_result=True)
def prune_webhooks() -> dict[str, int]:
    return retention.prune(utcnow(), get_settings())
