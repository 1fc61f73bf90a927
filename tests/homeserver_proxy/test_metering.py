"""Metering: in-memory counters, batched flushes to the Redis Stream, nothing lost on errors."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from homeserver_proxy.identity import TokenUsers
from homeserver_proxy.metering import UsageFlusher, UsageMeter
from platform_core.models.usage import Meter
from platform_core.redis import RedisKeys
from tests.helpers.platform import poll_async

Stream = tuple[aioredis.Redis, RedisKeys]


@pytest.fixture
async def stream(platform_env: dict[str, str]) -> AsyncIterator[Stream]:
    """A Redis client and keys of a usage stream of this test's own; removed afterwards."""
    keys = RedisKeys(f"{platform_env['C3_REDIS_NAMESPACE']}-meter-{uuid.uuid4().hex[:6]}")
    client = aioredis.from_url(platform_env["C3_REDIS_URL"])
    yield client, keys
    await client.delete(keys.usage_stream)
    await client.aclose()


async def batches(client: aioredis.Redis, keys: RedisKeys) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await client.xrange(keys.usage_stream)]


class FakeClock:
    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def _usage(batch: dict[str, Any]) -> dict[tuple[str, int, str], int]:
    return {(t, hour, meter): q for t, hour, meter, q in batch["usage"]}


def _events(batch: dict[str, Any]) -> set[tuple[str, str, str, int]]:
    return {(t, meter, nid, q) for t, meter, nid, q, _ in batch["events"]}


def test_meter_counts_requests_and_distinct_message_ids() -> None:
    clock = FakeClock(datetime(2026, 11, 25, 10, 30, tzinfo=UTC))
    hour = int(datetime(2026, 11, 25, 10, tzinfo=UTC).timestamp())
    meter = UsageMeter(clock)
    meter.record_request("t1", 10, 100)
    meter.record_request("t1", 5, 50)
    meter.record_event("t1", Meter.MESSAGES, "$a")
    meter.record_event("t1", Meter.MESSAGES, "$a")  # a client retry returns the same event id
    meter.record_event("t1", Meter.MESSAGES, "$b")
    meter.record_request("t2", 1, 2)
    batch = meter.drain()
    assert batch is not None
    assert _usage(batch) == {
        ("t1", hour, "api_requests"): 2,
        ("t1", hour, "bytes_in"): 15,
        ("t1", hour, "bytes_out"): 150,
        ("t2", hour, "api_requests"): 1,
        ("t2", hour, "bytes_in"): 1,
        ("t2", hour, "bytes_out"): 2,
    }
    assert _events(batch) == {("t1", "messages", "$a", 1), ("t1", "messages", "$b", 1)}
    assert meter.drain() is None  # drained: nothing is reported twice


def test_usage_is_split_at_the_hour_it_happened_in() -> None:
    clock = FakeClock(datetime(2026, 11, 25, 10, 59, 59, tzinfo=UTC))
    meter = UsageMeter(clock)
    meter.record_request("t1", 1, 1, media_egress=True)
    clock.now += 2  # 11:00:01, same flush window
    meter.record_request("t1", 1, 3, media_egress=True)
    batch = meter.drain()
    assert batch is not None
    usage = _usage(batch)
    ten, eleven = (int(datetime(2026, 11, 25, h, tzinfo=UTC).timestamp()) for h in (10, 11))
    assert usage[("t1", ten, "media_egress_bytes")] == 1
    assert usage[("t1", eleven, "media_egress_bytes")] == 3


def test_each_request_counts_once_in_its_hour_across_flushes_and_a_clock_set_back() -> None:
    clock = FakeClock(datetime(2026, 11, 25, 10, 59, 59, tzinfo=UTC))
    ten, eleven = (int(datetime(2026, 11, 25, h, tzinfo=UTC).timestamp()) for h in (10, 11))
    meter = UsageMeter(clock)
    meter.record_request("t1", 1, 1)
    first = meter.drain()
    meter.record_request("t1", 2, 2)  # the same hour, after the flush
    clock.now += 2  # 11:00:01
    meter.record_request("t1", 4, 4)
    clock.now -= 2  # the clock set back: 10:59:59 again
    meter.record_request("t1", 8, 8)
    second = meter.drain()
    assert first is not None and second is not None
    assert _usage(first) == {
        ("t1", ten, "api_requests"): 1,
        ("t1", ten, "bytes_in"): 1,
        ("t1", ten, "bytes_out"): 1,
    }
    assert _usage(second) == {
        ("t1", ten, "api_requests"): 2,
        ("t1", ten, "bytes_in"): 10,
        ("t1", ten, "bytes_out"): 10,
        ("t1", eleven, "api_requests"): 1,
        ("t1", eleven, "bytes_in"): 4,
        ("t1", eleven, "bytes_out"): 4,
    }


def test_an_active_user_is_reported_once_per_month_and_again_in_the_next() -> None:
    clock = FakeClock(datetime(2026, 10, 31, 23, 59, 58, tzinfo=UTC))
    meter = UsageMeter(clock)
    meter.record_active_user("t1", "@alice:acme")
    meter.record_active_user("t1", "@alice:acme")
    first = meter.drain()
    meter.record_active_user("t1", "@alice:acme")  # still October: already reported
    assert meter.drain() is None
    clock.now += 4  # November
    meter.record_active_user("t1", "@alice:acme")
    meter.record_active_user("t2", "@alice:acme")  # another tenant's alice is another user
    second = meter.drain()
    assert first is not None and second is not None
    assert _events(first) == {("t1", "active_users", "2026-10|@alice:acme", 1)}
    assert _events(second) == {
        ("t1", "active_users", "2026-11|@alice:acme", 1),
        ("t2", "active_users", "2026-11|@alice:acme", 1),
    }


def test_a_late_resolved_user_is_reported_in_the_month_of_the_request() -> None:
    clock = FakeClock(datetime(2026, 11, 1, 0, 0, 1, tzinfo=UTC))
    meter = UsageMeter(clock)
    october_request = datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    meter.record_active_user("t1", "@bob:acme", october_request)
    batch = meter.drain()
    assert batch is not None
    assert _events(batch) == {("t1", "active_users", "2026-10|@bob:acme", 1)}


async def test_flush_writes_one_batch_with_a_unique_id(stream: Stream) -> None:
    client, keys = stream
    meter = UsageMeter()
    flusher = UsageFlusher(meter, client, keys, source="test-proxy")
    meter.record_request("t1", 3, 4)
    await flusher.flush_once()
    await flusher.flush_once()  # idle: writes nothing
    meter.record_request("t1", 1, 1)
    await flusher.flush_once()
    written = await batches(client, keys)
    assert len(written) == 2
    assert len({fields[b"batch_id"] for fields in written}) == 2
    first = json.loads(written[0][b"payload"])
    assert {(meter, q) for _, _, meter, q in first["usage"]} == {
        ("api_requests", 1),
        ("bytes_in", 3),
        ("bytes_out", 4),
    }
    assert written[0][b"source"] == b"test-proxy"


async def test_batches_wait_out_a_redis_outage_and_keep_their_ids(stream: Stream) -> None:
    client, keys = stream
    broken = aioredis.from_url("redis://127.0.0.1:1/0")  # nothing listens there
    meter = UsageMeter()
    flusher = UsageFlusher(meter, broken, keys)
    meter.record_request("t1", 1, 1)
    await flusher.flush_once()
    meter.record_request("t1", 1, 1)
    await flusher.flush_once()
    assert flusher.queued_batches == 2
    queued_ids = [batch_id for batch_id, _ in flusher._queue]
    await broken.aclose()

    flusher._redis = client  # Redis is back
    await flusher.stop(deadline_s=5)
    assert flusher.queued_batches == 0
    assert [f[b"batch_id"].decode() for f in await batches(client, keys)] == queued_ids


async def test_shutdown_flushes_what_was_counted_since_the_last_tick(stream: Stream) -> None:
    client, keys = stream
    meter = UsageMeter()
    flusher = UsageFlusher(meter, client, keys, interval=3600)
    flusher.start()
    meter.record_request("t1", 7, 8)
    await flusher.stop()
    written = await batches(client, keys)
    assert len(written) == 1
    usage = json.loads(written[0][b"payload"])["usage"]
    assert ["t1", "bytes_out", 8] in [[t, meter, q] for t, _, meter, q in usage]


async def test_a_crowd_of_new_tokens_is_resolved_a_few_at_a_time() -> None:
    at_once = most = 0
    release = asyncio.Event()

    async def whoami(upstream: str, token: str) -> str:
        nonlocal at_once, most
        at_once += 1
        most = max(most, at_once)
        await release.wait()
        at_once -= 1
        return "@" + token + ":acme.c3.test"

    found: list[str] = []
    users = TokenUsers(whoami, max_resolving=4)
    for n in range(50):
        users.resolve_later("tenant", f"t{n}", "http://homeserver", found.append)
    await poll_async(lambda: at_once == 4, timeout=5, what="four whoamis under way")
    release.set()
    await users.settle(deadline_s=5)
    assert most == 4
    assert sorted(found) == sorted(f"@t{n}:acme.c3.test" for n in range(50))
    assert users.get("tenant", "t7") == "@t7:acme.c3.test"
