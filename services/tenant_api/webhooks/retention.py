"""Webhook retention: the outbox, the deliveries and their attempts would otherwise grow
forever. A beat task deletes what has been settled for longer than
``C3_WEBHOOK_RETENTION_DAYS``: deliveries that ended (succeeded, or failed for good) with
their attempts, then events fanned out that long ago with no delivery left, then the contexts'
outbox rows (``context_events``) copied into webhook events that long ago.

Never deleted: a pending delivery (due, retrying, or replayed), and so never its event; an
event not fanned out yet; a context row not copied yet; a ``usage.threshold`` event of the
current month (its natural id is what keeps the threshold from being announced twice).

Each batch is its own short transaction, and a run does a bounded number of them, so the
sweep never holds many locks or runs long; a backlog is worked off over the next runs.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from platform_core import webhook_events
from platform_core.db import task_session
from platform_core.settings import Settings
from tenant_api.webhooks.repository import RetentionRepository
from tenant_api.webhooks.thresholds import month_start

log = logging.getLogger(__name__)

BATCH = 1000
MAX_BATCHES = 50  # per kind of row and run: at most 50 000 of each per run


def prune(
    now: datetime, settings: Settings, *, batch: int = BATCH, max_batches: int = MAX_BATCHES
) -> dict[str, int]:
    """Delete what is past retention at ``now``; how many rows of each kind went."""
    before = now - timedelta(days=settings.webhook_retention_days)
    keep = {webhook_events.USAGE_THRESHOLD: month_start(now)}
    counts = {"deliveries": 0, "attempts": 0, "events": 0, "context_events": 0}
    for _ in range(max_batches):
        with task_session() as session:
            deliveries, attempts = RetentionRepository(session).delete_ended_deliveries(
                before, batch
            )
        counts["deliveries"] += deliveries
        counts["attempts"] += attempts
        if deliveries < batch:
            break
    for _ in range(max_batches):
        with task_session() as session:
            events = RetentionRepository(session).delete_fanned_out_events(before, keep, batch)
        counts["events"] += events
        if events < batch:
            break
    for _ in range(max_batches):
        with task_session() as session:
            rows = RetentionRepository(session).delete_copied_context_events(before, batch)
        counts["context_events"] += rows
        if rows < batch:
            break
    if any(counts.values()):
        log.info("webhook retention (%g days) deleted %s", settings.webhook_retention_days, counts)
    return counts
