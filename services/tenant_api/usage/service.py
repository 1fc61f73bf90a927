"""Usage rules: how a proxy's usage batch becomes ledger rows (exactly once)."""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from platform_core.models import Meter
from tenant_api.usage import repository

log = logging.getLogger(__name__)

COUNTED_METERS = (Meter.API_REQUESTS, Meter.BYTES_IN, Meter.BYTES_OUT)


def hour_of(ts: float) -> datetime:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def apply_batch(session: Session, batch_id: str, source: str, payload_json: str) -> bool:
    """Apply one batch in the caller's transaction; False if it was applied before.

    The batch id is recorded in the same transaction as the counters, so a crash either
    keeps both or neither: re-delivering the batch can never count it twice.
    """
    if not repository.claim_batch(session, batch_id, source):
        return False
    payload = json.loads(payload_json)
    ts = float(payload["ts"])
    at = datetime.fromtimestamp(ts, UTC)
    period = hour_of(ts)
    per_tenant: dict[str, dict[str, Any]] = payload.get("tenants", {})
    wanted = {uuid.UUID(t) for t in per_tenant}
    known = repository.existing_tenant_ids(session, wanted)
    deltas: dict[tuple[uuid.UUID, str, datetime], int] = defaultdict(int)
    for raw_id, usage in per_tenant.items():
        tenant_id = uuid.UUID(raw_id)
        if tenant_id not in known:
            log.error(
                "usage batch %s names unknown tenant %s; its usage is skipped", batch_id, raw_id
            )
            continue
        for meter in COUNTED_METERS:
            deltas[(tenant_id, meter.value, period)] += int(usage.get(meter.value, 0))
        event_ids = [str(e) for e in usage.get("messages", [])]
        new = repository.add_billable_events(
            session, tenant_id, Meter.MESSAGES.value, event_ids, at
        )
        deltas[(tenant_id, Meter.MESSAGES.value, period)] += new
    repository.add_to_counters(session, [(t, m, p, q) for (t, m, p), q in deltas.items()])
    return True
