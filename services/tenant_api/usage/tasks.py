"""The usage consumer: applies proxy usage batches from the Redis Stream to the ledger.

Entries are read through a consumer group, each applied in its own transaction together with
its batch id, and acknowledged (then deleted) only after commit. Entries a crashed consumer
left pending are claimed back after ``RECLAIM_IDLE_MS``. Re-applying a batch is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from functools import lru_cache
from typing import Any

import redis

from platform_core.celery import TaskNames, celery_app
from platform_core.db import task_session
from platform_core.metrics import park_dead_letters
from platform_core.redis import RedisKeys, keys_for
from platform_core.settings import get_settings
from platform_core.usage_batch import MalformedBatch, ParsedBatch, decode
from tenant_api.usage.service import apply_batches

log = logging.getLogger(__name__)
app = celery_app()

READ_COUNT = 500
RECLAIM_IDLE_MS = 30_000
TIME_BUDGET_S = 5.0


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    return redis.Redis.from_url(get_settings().require_redis_url())


def ensure_group(client: redis.Redis, keys: RedisKeys) -> None:
    try:
        client.xgroup_create(keys.usage_stream, keys.usage_group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def drain_usage_stream(
    client: redis.Redis,
    keys: RedisKeys,
    consumer: str,
    *,
    time_budget_s: float = TIME_BUDGET_S,
    dead_letter_max: int | None = None,
) -> dict[str, int]:
    """Apply every available batch (pending-reclaimed first); returns counts. Unparseable
    entries are parked in the dead-letter stream, which keeps its newest ``dead_letter_max``
    (default ``C3_USAGE_DEAD_LETTER_MAX``)."""
    ensure_group(client, keys)
    if dead_letter_max is None:
        dead_letter_max = get_settings().usage_dead_letter_max
    report = {"applied": 0, "duplicates": 0, "reclaimed": 0, "malformed": 0}
    # Redis 6.2 answers [cursor, entries], Redis 7 adds a third element (deleted ids).
    claimed: Any = client.xautoclaim(
        keys.usage_stream,
        keys.usage_group,
        consumer,
        min_idle_time=RECLAIM_IDLE_MS,
        count=READ_COUNT,
    )[1]
    report["reclaimed"] = len(claimed)
    _apply_entries(client, keys, claimed, report, dead_letter_max)
    # Our own pending entries (we died between commit and ack last time) before new ones.
    own: Any = client.xreadgroup(
        keys.usage_group, consumer, {keys.usage_stream: "0"}, count=READ_COUNT
    )
    if own:
        _apply_entries(client, keys, own[0][1], report, dead_letter_max)
    deadline = time.monotonic() + time_budget_s
    while time.monotonic() < deadline:
        response: Any = client.xreadgroup(
            keys.usage_group, consumer, {keys.usage_stream: ">"}, count=READ_COUNT
        )
        if not response:
            break
        entries = response[0][1]
        if not entries:
            break
        _apply_entries(client, keys, entries, report, dead_letter_max)
    return report


def _apply_entries(
    client: redis.Redis, keys: RedisKeys, entries, report: dict[str, int], dead_letter_max: int
) -> None:  # type: ignore[no-untyped-def]
    """Apply ``entries`` in ONE transaction (each batch id recorded with its effects), then
    acknowledge them all. One commit for a whole read amortizes the per-transaction cost."""
    parsed: list[tuple[str, str, ParsedBatch]] = []
    done_ids = []
    dead: list[dict[bytes, bytes]] = []
    for entry_id, fields in entries:
        if not fields:  # deleted while pending
            done_ids.append(entry_id)
            continue
        try:
            batch_id = fields[b"batch_id"].decode()
            source = fields.get(b"source", b"?").decode()
            parsed.append((batch_id, source, decode(fields[b"payload"].decode())))
            done_ids.append(entry_id)
        except (KeyError, UnicodeDecodeError, MalformedBatch) as exc:
            # Retrying cannot fix it: park it for a human instead of blocking the stream.
            log.error(
                "usage entry %s is malformed (%s); moved to %s", entry_id, exc, keys.usage_dead
            )
            dead.append({**fields, b"error": str(exc)[:500].encode()})
            done_ids.append(entry_id)  # parked: acknowledged with the others
            report["malformed"] += 1
    # Bounded: a proxy writing garbage in a loop must not fill Redis (noeviction) with it.
    park_dead_letters(client, keys, dead, max_len=dead_letter_max)
    if parsed:
        with task_session() as session:
            applied = apply_batches(session, parsed)
        report["applied"] += applied
        report["duplicates"] += len(parsed) - applied
    if not done_ids:
        return
    # Only after commit: a crash here leaves the entries pending, and re-applying is a no-op.
    pipe = client.pipeline()
    for entry_id in done_ids:
        pipe.xack(keys.usage_stream, keys.usage_group, entry_id)
        pipe.xdel(keys.usage_stream, entry_id)
    pipe.execute()


@app.task(name=TaskNames.APPLY_USAGE_BATCHES, acks_late=True, ignore_result=True)
def apply_usage_batches() -> dict[str, int]:
    consumer = f"{socket.gethostname()}:{os.getpid()}"
    return drain_usage_stream(_redis(), keys_for(get_settings()), consumer)
