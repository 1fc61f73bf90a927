"""The usage batch format: what the proxy encodes, the consumer decodes (and refuses garbage)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from platform_core import usage_batch
from platform_core.usage_batch import MalformedBatch, UsageEvent


def test_a_batch_decodes_to_what_was_encoded() -> None:
    tenant = uuid.uuid4()
    hour = int(datetime(2026, 11, 25, 10, tzinfo=UTC).timestamp())
    at = hour + 61.5
    batch = usage_batch.new_batch(
        hour + 1.0,
        [(str(tenant), hour, "api_requests", 3)],
        [(str(tenant), "messages", "$a", 1, at)],
    )
    decoded = usage_batch.decode(usage_batch.encode(batch))
    assert decoded.usage == [(tenant, "api_requests", datetime.fromtimestamp(hour, UTC), 3)]
    assert decoded.events == [UsageEvent(tenant, "messages", "$a", 1, at)]
    assert decoded.events[0].occurred_at == datetime.fromtimestamp(at, UTC)


TENANT = str(uuid.uuid4())


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"v": 1, "ts": 0, "usage": [], "events": []},
        {"v": 2, "ts": 0, "usage": [["not-a-uuid", 0, "api_requests", 1]], "events": []},
        {"v": 2, "ts": 0, "usage": [[TENANT, 0, "messages", 1]], "events": []},
        {"v": 2, "ts": 0, "usage": [], "events": [[TENANT, "messages", "", 1, 0]]},
        {"v": 2, "ts": 0, "usage": [[TENANT, 0, "api_requests", -1]], "events": []},
        {"v": 2, "ts": 0, "usage": []},
    ],
)
def test_anything_else_is_malformed(payload: object) -> None:
    with pytest.raises(MalformedBatch):
        usage_batch.decode(json.dumps(payload))
