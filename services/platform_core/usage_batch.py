"""The usage batch: what a proxy writes to the usage stream and the usage consumer reads.

Version 2, all times UTC epoch seconds::

    {"v": 2, "ts": <window start>,
     "usage":  [[tenant_id, hour_start, meter, quantity], ...],        # summable counters
     "events": [[tenant_id, meter, natural_id, quantity, ts], ...]}    # counted once per id

Events are messages and calls (natural id = event_id), uploads (the mxc URI, quantity =
bytes) and monthly active users (``"2026-11|@alice:acme"``). The writer is
``homeserver_proxy.metering``, the reader ``tenant_api.usage.tasks``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from platform_core.models.usage import Meter

VERSION = 2
SUMMED_METERS = frozenset(
    {Meter.API_REQUESTS, Meter.BYTES_IN, Meter.BYTES_OUT, Meter.MEDIA_EGRESS_BYTES}
)
EVENT_METERS = frozenset({Meter.MESSAGES, Meter.CALLS, Meter.MEDIA_BYTES, Meter.ACTIVE_USERS})
MAX_NATURAL_ID = 512

# What the writer puts in: (tenant_id, hour_start, meter, quantity) and
# (tenant_id, meter, natural_id, quantity, ts).
UsageRow = tuple[str, int, str, int]
EventRow = tuple[str, str, str, int, float]


class MalformedBatch(ValueError):
    """A stream entry that is not a usage batch this consumer understands."""


class UsageEvent(NamedTuple):
    """A billable event, counted once per (tenant, meter, natural id)."""

    tenant_id: uuid.UUID
    meter: str
    natural_id: str
    quantity: int
    ts: float  # UTC epoch seconds

    @property
    def occurred_at(self) -> datetime:
        return datetime.fromtimestamp(self.ts, UTC)


@dataclass
class ParsedBatch:
    """A decoded, validated batch."""

    usage: list[tuple[uuid.UUID, str, datetime, int]]  # tenant, meter, hour, quantity
    events: list[UsageEvent]


def new_batch(
    window_start: float, usage: Iterable[UsageRow], events: Iterable[EventRow]
) -> dict[str, object]:
    """A batch as a JSON-ready object (``encode`` makes the stream payload of it)."""
    return {
        "v": VERSION,
        "ts": window_start,
        "usage": [list(row) for row in usage],
        "events": [list(row) for row in events],
    }


def encode(batch: dict[str, object]) -> str:
    return json.dumps(batch, separators=(",", ":"))


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


def decode(payload_json: str) -> ParsedBatch:
    """Validate a version 2 batch (raises ``MalformedBatch``); touches no database."""
    try:
        payload = json.loads(payload_json)
        if not isinstance(payload, dict) or payload.get("v") != VERSION:
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
                UsageEvent(_tenant(tenant), meter, natural_id, _quantity(quantity), _timestamp(ts))
            )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, MalformedBatch):
            raise
        raise MalformedBatch(f"{type(exc).__name__}: {exc}") from exc
    return ParsedBatch(usage, events)
