"""The usage consumer applies proxy batches exactly once, whatever is redelivered."""

from __future__ import annotations

import json
import time
import uuid

import redis
from sqlalchemy import func, select

from platform_core.db import task_session
from platform_core.models import UsageCounter
from platform_core.redis import RedisKeys
from tenant_api.usage import tasks
from tests.factories import make_tenant


def _totals(tenant_id: uuid.UUID) -> dict[str, int]:
    with task_session() as session:
        rows = session.execute(
            select(UsageCounter.meter, func.sum(UsageCounter.quantity))
            .where(UsageCounter.tenant_id == tenant_id)
            .group_by(UsageCounter.meter)
        )
        return {meter: int(total) for meter, total in rows}


def _batch(tenant_id: uuid.UUID, *, requests: int, messages: list[str]) -> dict[str, str]:
    payload = {
        "ts": time.time(),
        "tenants": {
            str(tenant_id): {
                "api_requests": requests,
                "bytes_in": 10 * requests,
                "bytes_out": 100 * requests,
                "messages": messages,
            }
        },
    }
    return {"batch_id": uuid.uuid4().hex, "source": "test", "payload": json.dumps(payload)}


def _keys(platform_env: dict[str, str]) -> RedisKeys:
    return RedisKeys(f"{platform_env['C3_REDIS_NAMESPACE']}-usage-{uuid.uuid4().hex[:6]}")


def test_batches_are_applied_and_messages_counted_once_per_event_id(
    platform_env: dict[str, str], redis_client: redis.Redis
) -> None:
    keys = _keys(platform_env)
    tenant = make_tenant()
    redis_client.xadd(keys.usage_stream, _batch(tenant, requests=3, messages=["$a", "$b"]))
    # A second proxy saw the client's retry of $b: same event, must not bill twice.
    redis_client.xadd(keys.usage_stream, _batch(tenant, requests=2, messages=["$b", "$c"]))
    report = tasks.drain_usage_stream(redis_client, keys, "consumer-1")
    assert report["applied"] == 2
    assert _totals(tenant) == {"api_requests": 5, "bytes_in": 50, "bytes_out": 500, "messages": 3}
    assert redis_client.xlen(keys.usage_stream) == 0  # acknowledged entries are trimmed


def test_the_same_batch_written_twice_counts_once(
    platform_env: dict[str, str], redis_client: redis.Redis
) -> None:
    keys = _keys(platform_env)
    tenant = make_tenant()
    batch = _batch(tenant, requests=4, messages=["$x"])
    redis_client.xadd(keys.usage_stream, batch)
    redis_client.xadd(keys.usage_stream, batch)  # the proxy retried a write that had landed
    report = tasks.drain_usage_stream(redis_client, keys, "consumer-1")
    assert report == {"applied": 1, "duplicates": 1, "reclaimed": 0}
    assert _totals(tenant)["api_requests"] == 4
    assert _totals(tenant)["messages"] == 1


def test_a_consumer_that_died_after_commit_before_ack_does_not_double_count(
    platform_env: dict[str, str], redis_client: redis.Redis, monkeypatch
) -> None:
    keys = _keys(platform_env)
    tenant = make_tenant()
    redis_client.xadd(keys.usage_stream, _batch(tenant, requests=6, messages=["$m1", "$m2"]))

    original_pipeline = redis_client.pipeline

    class Crash(Exception):
        pass

    def crash_on_ack():  # type: ignore[no-untyped-def]
        raise Crash("consumer killed between commit and ack")

    monkeypatch.setattr(redis_client, "pipeline", crash_on_ack)
    try:
        tasks.drain_usage_stream(redis_client, keys, "consumer-1")
    except Crash:
        pass
    monkeypatch.setattr(redis_client, "pipeline", original_pipeline)
    assert _totals(tenant)["api_requests"] == 6  # committed before the crash
    assert redis_client.xpending(keys.usage_stream, keys.usage_group)["pending"] == 1

    # The same consumer restarts: it re-reads its pending entry, which changes nothing.
    report = tasks.drain_usage_stream(redis_client, keys, "consumer-1")
    assert report["duplicates"] == 1
    assert _totals(tenant) == {"api_requests": 6, "bytes_in": 60, "bytes_out": 600, "messages": 2}
    assert redis_client.xpending(keys.usage_stream, keys.usage_group)["pending"] == 0


def test_another_consumer_reclaims_entries_left_by_a_dead_one(
    platform_env: dict[str, str], redis_client: redis.Redis, monkeypatch
) -> None:
    keys = _keys(platform_env)
    tenant = make_tenant()
    tasks.ensure_group(redis_client, keys)
    redis_client.xadd(keys.usage_stream, _batch(tenant, requests=1, messages=[]))
    # consumer-dead read the entry and vanished before applying it.
    redis_client.xreadgroup(keys.usage_group, "consumer-dead", {keys.usage_stream: ">"})
    monkeypatch.setattr(tasks, "RECLAIM_IDLE_MS", 0)
    report = tasks.drain_usage_stream(redis_client, keys, "consumer-2")
    assert report["reclaimed"] == 1 and report["applied"] == 1
    assert _totals(tenant)["api_requests"] == 1


def test_usage_for_an_unknown_tenant_is_skipped_not_fatal(
    platform_env: dict[str, str], redis_client: redis.Redis
) -> None:
    keys = _keys(platform_env)
    known = make_tenant()
    redis_client.xadd(keys.usage_stream, _batch(uuid.uuid4(), requests=9, messages=["$z"]))
    redis_client.xadd(keys.usage_stream, _batch(known, requests=2, messages=[]))
    report = tasks.drain_usage_stream(redis_client, keys, "consumer-1")
    assert report["applied"] == 2
    assert _totals(known)["api_requests"] == 2
