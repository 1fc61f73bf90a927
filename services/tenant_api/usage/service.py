"""Usage rules: how a proxy's usage batch becomes ledger rows (exactly once)."""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from platform_core.models import Meter
from tenant_api.usage import repository
from tenant_api.usage.repository import NewEvent

log = logging.getLogger(__name__)

SUMMED_METERS = frozenset(
    {Meter.API_REQUESTS, Meter.BYTES_IN, Meter.BYTES_OUT, Meter.MEDIA_EGRESS_BYTES}
)
EVENT_METERS = frozenset({Meter.MESSAGES, Meter.CALLS, Meter.MEDIA_BYTES, Meter.ACTIVE_USERS})
MAX_NATURAL_ID = 512


class MalformedBatch(ValueError):
    """A stream entry that is not a usage batch this consumer understands."""


@dataclass
class ParsedBatch:
    usage: list[tuple[uuid.UUID, str, datetime, int]]  # tenant, meter, hour, quantity
    events: list[NewEvent]


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _moment(ts: object) -> datetime:
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        raise MalformedBatch(f"timestamp {ts!r} is not a number")
    return datetime.fromtimestamp(ts, UTC)


def _timestamp(ts: object) -> float:
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not 0 <= ts < 32503680000:
        raise MalformedBatch(f"timestamp {ts!r} is not a time")
    return float(ts)


_tenant_ids: dict[str, uuid.UUID] = {}


def _tenant(raw: object) -> uuid.UUID:
    """Parse a tenant id once per distinct string (a batch names few tenants many times)."""
    found = _tenant_ids.get(raw) if isinstance(raw, str) else None
    if found is None:
        found = uuid.UUID(str(raw))
        if len(_tenant_ids) > 100_000:
            _tenant_ids.clear()
        _tenant_ids[str(raw)] = found
    return found


def _quantity(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedBatch(f"quantity {value!r} is not a non-negative integer")
    return value


def parse_batch(payload_json: str) -> ParsedBatch:
    """Validate a version 2 batch (see homeserver_proxy.metering) without touching the DB."""
    try:
        payload = json.loads(payload_json)
        if not isinstance(payload, dict) or payload.get("v") != 2:
            raise MalformedBatch("not a version 2 usage batch")
        usage = []
        for tenant, hour, meter, quantity in payload["usage"]:
            if meter not in SUMMED_METERS:
                raise MalformedBatch(f"{meter!r} is not a summed meter")
            usage.append((_tenant(tenant), meter, hour_of(_moment(hour)), _quantity(quantity)))
        events = []
        for tenant, meter, natural_id, quantity, ts in payload["events"]:
            if meter not in EVENT_METERS:
                raise MalformedBatch(f"{meter!r} is not an event meter")
            if not isinstance(natural_id, str) or not 0 < len(natural_id) <= MAX_NATURAL_ID:
                raise MalformedBatch(f"bad natural id {natural_id!r:.80}")
            events.append(
                NewEvent(_tenant(tenant), meter, natural_id, _quantity(quantity), _timestamp(ts))
            )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, MalformedBatch):
            raise
        raise MalformedBatch(f"{type(exc).__name__}: {exc}") from exc
    return ParsedBatch(usage, events)


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
    claimed = repository.claim_batches(
        session, [(batch_id, source) for batch_id, (source, _) in unique.items()]
    )
    fresh = [unique[batch_id][1] for batch_id in unique if batch_id in claimed]
    usage = [row for batch in fresh for row in batch.usage]
    events = [event for batch in fresh for event in batch.events]
    wanted = {row[0] for row in usage} | {event.tenant_id for event in events}
    known = repository.existing_tenant_ids(session, wanted)
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
    for key, quantity in repository.add_billable_events(session, kept).items():
        deltas[key] += quantity
    repository.add_to_counters(session, [(t, m, p, q) for (t, m, p), q in deltas.items()])
    return len(claimed)
