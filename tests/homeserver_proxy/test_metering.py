"""Metering: in-memory counters, batched flushes to the Redis Stream, nothing lost on errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from homeserver_proxy.metering import UsageFlusher, UsageMeter
from platform_core.redis import RedisKeys

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


def test_meter_counts_requests_and_distinct_message_ids() -> None:
    meter = UsageMeter()
    meter.record_request("t1", 10, 100)
    meter.record_request("t1", 5, 50)
    meter.record_message("t1", "$a")
    meter.record_message("t1", "$a")  # a client retry returns the same event id
    meter.record_message("t1", "$b")
    meter.record_request("t2", 1, 2)
    batch = meter.drain()
    assert batch is not None
    assert batch["tenants"] == {
        "t1": {"api_requests": 2, "bytes_in": 15, "bytes_out": 150, "messages": ["$a", "$b"]},
        "t2": {"api_requests": 1, "bytes_in": 1, "bytes_out": 2, "messages": []},
    }
    assert meter.drain() is None  # drained: nothing is reported twice


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
    assert first["tenants"]["t1"]["api_requests"] == 1
    assert first["tenants"]["t1"]["bytes_in"] == 3
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
    assert json.loads(written[0][b"payload"])["tenants"]["t1"]["bytes_out"] == 8
