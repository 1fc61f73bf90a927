"""Usage rules: how a proxy's usage batch becomes ledger rows (exactly once).

The batch format itself (encode, decode, validation) is ``platform_core.usage_batch``.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from datetime import datetime

from sqlalchemy.orm import Session

from platform_core.usage_batch import ParsedBatch
from tenant_api.usage.repository import UsageBatchRepository

log = logging.getLogger(__name__)


def apply_batches(session: Session, batches: list[tuple[str, str, ParsedBatch]]) -> int:
    """Apply batches in the caller's transaction; returns how many were new.

    Each batch id is recorded in the same transaction as the counters, so a crash either
    keeps both or neither: re-delivering a batch can never count it twice (nor can the same
    batch appearing twice in one call). A billable event adds to its counter only the first
    time its natural id is seen.
    """
    unique: dict[str, tuple[str, ParsedBatch]] = {}
    for batch_id, source, batch in batches:
        unique.setdefault(batch_id, (source, batch))
    ledger = UsageBatchRepository(session)
    claimed = ledger.claim_batches([(batch_id, source) for batch_id, (source, _) in unique.items()])
    fresh = [unique[batch_id][1] for batch_id in unique if batch_id in claimed]
    usage = [row for batch in fresh for row in batch.usage]
    events = [event for batch in fresh for event in batch.events]
    wanted = {row[0] for row in usage} | {event.tenant_id for event in events}
    known = ledger.existing_tenant_ids(wanted)
    if unknown := wanted - known:
        log.error(
            "usage batches name unknown tenants %s; their usage is skipped",
            ", ".join(sorted(map(str, unknown))),
        )
    deltas: dict[tuple[uuid.UUID, str, datetime], int] = defaultdict(int)
    for tenant_id, meter, hour, quantity in usage:
        if tenant_id in known:
            deltas[(tenant_id, meter, hour)] += quantity
    kept = [event for event in events if event.tenant_id in known]
    for key, quantity in ledger.add_billable_events(kept).items():
        deltas[key] += quantity
    ledger.add_to_counters([(t, m, p, q) for (t, m, p), q in deltas.items()])
    return len(claimed)
