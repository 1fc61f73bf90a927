"""The usage consumer applies proxy batches exactly once, whatever is redelivered."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy import func, select

from platform_core.db import task_session
from platform_core.metrics import UsageStats
from platform_core.models import UsageCounter
from platform_core.redis import RedisKeys
from platform_core.settings import get_settings
from tenant_api.invoices.repository import InvoiceRepository
from tenant_api.usage import tasks
from tests.helpers.factories import make_tenant


def _totals(tenant_id: uuid.UUID) -> dict[str, int]:
    with task_session() as session:
        rows = session.execute(
            select(UsageCounter.meter, func.sum(UsageCounter.quantity))
            .where(UsageCounter.tenant_id == tenant_id)
            .group_by(UsageCounter.meter)
        )
        return {meter: int(total) for meter, total in rows}


def _batch(
    tenant_id: uuid.UUID,
    *,
    requests: int,
    messages: list[str],
    events: list[tuple[str, str, int, float]] = (),  # type: ignore[assignment]
    ts: float | None = None,
) -> dict[str, str]:
    """A version 2 batch as a proxy writes it (homeserver_proxy.metering)."""
    now = time.time() if ts is None else ts
    hour = int(now) // 3600 * 3600
    tenant = str(tenant_id)
    usage = [
        [tenant, hour, "api_requests", requests],
        [tenant, hour, "bytes_in", 10 * requests],
        [tenant, hour, "bytes_out", 100 * requests],
    ]
    payload = {
        "v": 2,
        "ts": now,
        "usage": [row for row in usage if row[3]],
        "events": [[tenant, "messages", event_id, 1, now] for event_id in messages]
        + [[tenant, meter, nid, quantity, at] for meter, nid, quantity, at in events],
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
    assert report == {"applied": 1, "duplicates": 1, "reclaimed": 0, "malformed": 0}
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


def test_uploads_bill_their_bytes_once_per_mxc_uri(
    platform_env: dict[str, str], redis_client: redis.Redis
) -> None:
    keys = _keys(platform_env)
    tenant = make_tenant()
    now = time.time()
    upload = ("media_bytes", "mxc://acme/abc", 5000, now)
    redis_client.xadd(keys.usage_stream, _batch(tenant, requests=1, messages=[], events=[upload]))
    redis_client.xadd(keys.usage_stream, _batch(tenant, requests=1, messages=[], events=[upload]))
    tasks.drain_usage_stream(redis_client, keys, "consumer-1")
    assert _totals(tenant)["media_bytes"] == 5000


def test_monthly_active_users_count_each_user_once_per_calendar_month(
    platform_env: dict[str, str], redis_client: redis.Redis
) -> None:
    keys = _keys(platform_env)
    tenant = make_tenant()
    october = datetime(2026, 10, 31, 23, 59, 30, tzinfo=UTC).timestamp()
    november = datetime(2026, 11, 1, 0, 0, 30, tzinfo=UTC).timestamp()

    def active(month: str, user: str, at: float) -> tuple[str, str, int, float]:
        return ("active_users", f"{month}|{user}", 1, at)

    for events in (
        [active("2026-10", "@alice:acme", october), active("2026-10", "@bob:acme", october)],
        [active("2026-10", "@alice:acme", october)],  # another proxy saw alice too
        [active("2026-11", "@alice:acme", november)],
    ):
        redis_client.xadd(keys.usage_stream, _batch(tenant, requests=0, messages=[], events=events))
    tasks.drain_usage_stream(redis_client, keys, "consumer-1")
    with task_session() as session:
        by_month = InvoiceRepository(session).usage_between(
            tenant, datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
        )
        november_totals = InvoiceRepository(session).usage_between(
            tenant, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
        )
    assert by_month["active_users"] == 2
    assert november_totals["active_users"] == 1


def test_a_malformed_entry_is_parked_and_does_not_block_the_stream(
    platform_env: dict[str, str], redis_client: redis.Redis
) -> None:
    keys = _keys(platform_env)
    tenant = make_tenant()
    redis_client.xadd(keys.usage_stream, {"batch_id": "x", "source": "?", "payload": "{oops"})
    redis_client.xadd(keys.usage_stream, _batch(tenant, requests=2, messages=[]))
    report = tasks.drain_usage_stream(redis_client, keys, "consumer-1")
    assert (report["malformed"], report["applied"]) == (1, 1)
    assert _totals(tenant)["api_requests"] == 2
    parked = redis_client.xrange(keys.usage_dead)
    assert len(parked) == 1 and parked[0][1][b"payload"] == b"{oops"
    redis_client.delete(keys.usage_dead)


def test_the_dead_letter_stream_keeps_only_the_newest_entries_and_counts_the_dropped(
    platform_env: dict[str, str], redis_client: redis.Redis
) -> None:
    """A proxy writing garbage in a loop must not fill Redis: the dead-letter stream keeps the
    newest ``C3_USAGE_DEAD_LETTER_MAX`` entries and counts what it dropped for /metrics."""
    keys = _keys(platform_env)
    for n in range(12):
        redis_client.xadd(keys.usage_stream, {"batch_id": f"bad-{n}", "payload": "{oops"})
    report = tasks.drain_usage_stream(redis_client, keys, "consumer-1", dead_letter_max=5)
    assert report["malformed"] == 12
    parked = redis_client.xrange(keys.usage_dead)
    assert [fields[b"batch_id"] for _, fields in parked] == [
        f"bad-{n}".encode() for n in range(7, 12)
    ]
    # A later drain keeps the bound too (the trim is not only per read).
    redis_client.xadd(keys.usage_stream, {"batch_id": "bad-12", "payload": "{oops"})
    tasks.drain_usage_stream(redis_client, keys, "consumer-1", dead_letter_max=5)
    assert redis_client.xlen(keys.usage_dead) == 5
    assert redis_client.xrevrange(keys.usage_dead, count=1)[0][1][b"batch_id"] == b"bad-12"
    stats = UsageStats.from_redis(redis_client.hgetall(keys.usage_metrics))
    assert stats == UsageStats(dead_lettered=13, dead_letter_dropped=8)


def test_the_dead_letter_bound_defaults_to_the_setting(
    platform_env: dict[str, str], redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("C3_USAGE_DEAD_LETTER_MAX", "2")
    get_settings.cache_clear()
    try:
        keys = _keys(platform_env)
        for n in range(4):
            redis_client.xadd(keys.usage_stream, {"batch_id": f"bad-{n}", "payload": "{oops"})
        tasks.drain_usage_stream(redis_client, keys, "consumer-1")
    finally:
        monkeypatch.delenv("C3_USAGE_DEAD_LETTER_MAX")
        get_settings.cache_clear()
    assert [f[b"batch_id"] for _, f in redis_client.xrange(keys.usage_dead)] == [b"bad-2", b"bad-3"]
