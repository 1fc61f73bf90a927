"""Metering: in-memory counters, batched flushes to the Redis Stream, nothing lost on errors."""

from __future__ import annotations

import json
import uuid

import redis
import redis.asyncio as aioredis

from homeserver_proxy.metering import UsageFlusher, UsageMeter
from platform_core.redis import RedisKeys


def _keys(platform_env: dict[str, str]) -> RedisKeys:
    return RedisKeys(f"{platform_env['C3_REDIS_NAMESPACE']}-meter-{uuid.uuid4().hex[:6]}")


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


async def test_flush_writes_one_batch_with_a_unique_id(platform_env: dict[str, str]) -> None:
    keys = _keys(platform_env)
    client = aioredis.from_url(platform_env["C3_REDIS_URL"])
    meter = UsageMeter()
    flusher = UsageFlusher(meter, client, keys, source="test-proxy")
    try:
        meter.record_request("t1", 3, 4)
        await flusher.flush_once()
        await flusher.flush_once()  # idle: writes nothing
        meter.record_request("t1", 1, 1)
        await flusher.flush_once()
        entries = await client.xrange(keys.usage_stream)
        assert len(entries) == 2
        ids = {fields[b"batch_id"] for _, fields in entries}
        assert len(ids) == 2
        first = json.loads(entries[0][1][b"payload"])
        assert first["tenants"]["t1"]["api_requests"] == 1
        assert first["tenants"]["t1"]["bytes_in"] == 3
        assert entries[0][1][b"source"] == b"test-proxy"
    finally:
        await client.delete(keys.usage_stream)
        await client.aclose()


async def test_batches_wait_out_a_redis_outage_and_keep_their_ids(
    platform_env: dict[str, str],
) -> None:
    keys = _keys(platform_env)
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

    working = aioredis.from_url(platform_env["C3_REDIS_URL"])
    flusher._redis = working  # Redis is back
    try:
        await flusher.stop(deadline_s=5)
        assert flusher.queued_batches == 0
        entries = await working.xrange(keys.usage_stream)
        assert [f[b"batch_id"].decode() for _, f in entries] == queued_ids
    finally:
        await working.delete(keys.usage_stream)
        await working.aclose()


async def test_shutdown_flushes_what_was_counted_since_the_last_tick(
    platform_env: dict[str, str],
) -> None:
    keys = _keys(platform_env)
    client = aioredis.from_url(platform_env["C3_REDIS_URL"])
    meter = UsageMeter()
    flusher = UsageFlusher(meter, client, keys, interval=3600)
    flusher.start()
    meter.record_request("t1", 7, 8)
    await flusher.stop()
    sync = redis.Redis.from_url(platform_env["C3_REDIS_URL"])
    try:
        entries = sync.xrange(keys.usage_stream)
        assert len(entries) == 1
        assert json.loads(entries[0][1][b"payload"])["tenants"]["t1"]["bytes_out"] == 8
    finally:
        sync.delete(keys.usage_stream)
        sync.close()
        await client.aclose()
