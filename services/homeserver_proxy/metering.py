"""In-memory usage counters flushed as batches to a Redis Stream (no round trip per request).

Each flush drains the counters into a batch with a unique id. A batch that cannot be written
stays queued (same id) and is retried on the next tick, so a Redis hiccup loses nothing and the
consumer's batch-id check makes a retried write harmless. ``kill -9`` loses at most the counts
of the current interval (``C3_USAGE_FLUSH_INTERVAL_S``, 1 s by default).

The batch format (version 2: summed counters per tenant and UTC hour, and billable events
counted once per natural id) is ``platform_core.usage_batch``, shared with the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis

from platform_core import usage_batch
from platform_core.models.usage import Meter
from platform_core.redis import RedisKeys

log = logging.getLogger(__name__)

_MAX_QUEUED_BATCHES = 3600  # an hour of 1 s batches kept while Redis is away

Clock = Callable[[], float]


class _HourUsage:
    __slots__ = ("api_requests", "bytes_in", "bytes_out", "media_egress_bytes")

    def __init__(self) -> None:
        self.api_requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.media_egress_bytes = 0


class _Month:
    """The UTC calendar month containing ``now``, cached: MAU keys are per month."""

    def __init__(self, now: float) -> None:
        moment = datetime.fromtimestamp(now, UTC)
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
        self.label = start.strftime("%Y-%m")
        self.start = start.timestamp()
        self.end = end.timestamp()

    def contains(self, now: float) -> bool:
        return self.start <= now < self.end


class UsageMeter:
    """Counts per tenant and UTC hour; collects billable events by natural id."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._hours: dict[tuple[str, int], _HourUsage] = {}
        self._events: dict[tuple[str, str, str], tuple[int, float]] = {}
        self._window_start = clock()
        self._month = _Month(self._window_start)
        # Active users already sent this month: each is reported once per month per proxy.
        self._reported_active: set[tuple[str, str]] = set()

    def now(self) -> float:
        return self._clock()

    def _hour(self, tenant_id: str) -> _HourUsage:
        key = (tenant_id, int(self._clock()) // 3600 * 3600)
        usage = self._hours.get(key)
        if usage is None:
            usage = self._hours[key] = _HourUsage()
        return usage

    def record_request(
        self, tenant_id: str, bytes_in: int, bytes_out: int, *, media_egress: bool = False
    ) -> None:
        usage = self._hour(tenant_id)
        usage.api_requests += 1
        usage.bytes_in += bytes_in
        usage.bytes_out += bytes_out
        if media_egress:
            usage.media_egress_bytes += bytes_out

    def record_event(
        self, tenant_id: str, meter: Meter, natural_id: str, quantity: int = 1
    ) -> None:
        key = (tenant_id, meter.value, natural_id)
        if key not in self._events:
            self._events[key] = (quantity, self._clock())

    def record_active_user(self, tenant_id: str, user_id: str, at: float | None = None) -> None:
        """``user_id`` made a successful authenticated request at ``at`` (default: now)."""
        now = self._clock() if at is None else at
        month = self._month
        if not month.contains(now):
            month = _Month(now)
            if now >= self._month.end:  # a new month began: last month's reports are done
                self._month = month
                self._reported_active.clear()
        key = (tenant_id, f"{month.label}|{user_id}")
        if key in self._reported_active:
            return
        self._reported_active.add(key)
        self._events[(tenant_id, Meter.ACTIVE_USERS.value, key[1])] = (1, now)

    def drain(self) -> dict[str, object] | None:
        """Take everything counted so far as one batch payload (None when idle)."""
        hours, self._hours = self._hours, {}
        events, self._events = self._events, {}
        window_start, self._window_start = self._window_start, self._clock()
        if not hours and not events:
            return None
        usage: list[usage_batch.UsageRow] = []
        for (tenant_id, hour), counts in hours.items():
            for meter in _HourUsage.__slots__:
                quantity = getattr(counts, meter)
                if quantity:
                    usage.append((tenant_id, hour, meter, quantity))
        return usage_batch.new_batch(
            window_start,
            usage,
            (
                (tenant_id, meter, natural_id, quantity, ts)
                for (tenant_id, meter, natural_id), (quantity, ts) in events.items()
            ),
        )


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
        self._queue.append((uuid.uuid4().hex, usage_batch.encode(payload)))

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
