"""In-memory usage counters flushed as batches to a Redis Stream (no round trip per request).

Each flush drains the counters into a batch with a unique id. A batch that cannot be written
stays queued (same id) and is retried on the next tick, so a Redis hiccup loses nothing and the
consumer's batch-id check makes a retried write harmless. ``kill -9`` loses at most the counts
of the current interval (``C3_USAGE_FLUSH_INTERVAL_S``, 1 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from platform_core.redis import RedisKeys

log = logging.getLogger(__name__)

_MAX_QUEUED_BATCHES = 3600  # an hour of 1 s batches kept while Redis is away


@dataclass
class TenantUsage:
    api_requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    message_event_ids: set[str] = field(default_factory=set)


class UsageMeter:
    def __init__(self) -> None:
        self._usage: dict[str, TenantUsage] = {}
        self._window_start = time.time()

    def record_request(self, tenant_id: str, bytes_in: int, bytes_out: int) -> None:
        usage = self._usage.get(tenant_id)
        if usage is None:
            usage = self._usage[tenant_id] = TenantUsage()
        usage.api_requests += 1
        usage.bytes_in += bytes_in
        usage.bytes_out += bytes_out

    def record_message(self, tenant_id: str, event_id: str) -> None:
        usage = self._usage.get(tenant_id)
        if usage is None:
            usage = self._usage[tenant_id] = TenantUsage()
        usage.message_event_ids.add(event_id)

    def drain(self) -> dict[str, object] | None:
        """Take everything counted so far as one batch payload (None when idle)."""
        usage, self._usage = self._usage, {}
        window_start, self._window_start = self._window_start, time.time()
        if not usage:
            return None
        return {
            "ts": window_start,
            "tenants": {
                tenant_id: {
                    "api_requests": u.api_requests,
                    "bytes_in": u.bytes_in,
                    "bytes_out": u.bytes_out,
                    "messages": sorted(u.message_event_ids),
                }
                for tenant_id, u in usage.items()
            },
        }


class UsageFlusher:
    def __init__(
        self,
        meter: UsageMeter,
        redis: aioredis.Redis,
        keys: RedisKeys,
        *,
        interval: float = 1.0,
        source: str | None = None,
    ) -> None:
        self._meter = meter
        self._redis = redis
        self._keys = keys
        self._interval = interval
        self.source = source or f"proxy:{socket.gethostname()}:{os.getpid()}"
        self._queue: deque[tuple[str, str]] = deque()  # (batch_id, payload JSON)
        self._task: asyncio.Task[None] | None = None

    @property
    def queued_batches(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-flusher")

    async def stop(self, *, deadline_s: float = 5.0) -> None:
        """Stop ticking, then flush what is left, retrying until ``deadline_s``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        end = time.monotonic() + deadline_s
        self._take_batch()
        while self._queue and time.monotonic() < end:
            if not await self._write_queued():
                await asyncio.sleep(0.2)
        if self._queue:
            log.error("usage lost at shutdown: %d batches could not reach Redis", len(self._queue))

    async def flush_once(self) -> None:
        self._take_batch()
        await self._write_queued()

    def _take_batch(self) -> None:
        payload = self._meter.drain()
        if payload is None:
            return
        if len(self._queue) >= _MAX_QUEUED_BATCHES:
            dropped_id, _ = self._queue.popleft()
            log.error("usage batch %s dropped: Redis unreachable for too long", dropped_id)
        self._queue.append((uuid.uuid4().hex, json.dumps(payload, separators=(",", ":"))))

    async def _write_queued(self) -> bool:
        while self._queue:
            batch_id, payload = self._queue[0]
            try:
                await self._redis.xadd(
                    self._keys.usage_stream,
                    {"batch_id": batch_id, "source": self.source, "payload": payload},
                )
            except (aioredis.RedisError, OSError) as exc:
                log.warning(
                    "usage flush deferred (%s); %d batches queued",
                    type(exc).__name__,
                    len(self._queue),
                )
                return False
            self._queue.popleft()
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush_once()
