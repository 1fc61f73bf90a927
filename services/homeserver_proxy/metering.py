"""What a forwarded exchange bills, counted in memory and flushed as batches to a Redis Stream
(no round trip per request).

``ExchangeMeter.record`` is the one call per forwarded client exchange: it reads the billable
facts (``billable``) and the active user (``identity``) and counts them in a ``UsageMeter``.

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
from typing import Protocol

import redis.asyncio as aioredis

from homeserver_proxy import billable
from homeserver_proxy.asgi import Scope
from homeserver_proxy.billable import Kind
from homeserver_proxy.identity import TokenUsers, access_token
from platform_core import usage_batch
from platform_core.models.usage import Meter
from platform_core.redis import RedisKeys
from platform_core.routes import Route

log = logging.getLogger(__name__)

_MAX_QUEUED_BATCHES = 3600  # an hour of 1 s batches kept while Redis is away

Clock = Callable[[], float]


class Outcome(Protocol):
    """What metering reads of a forwarded exchange: the app's ``ForwardResult``, or the fast
    lane's exchange itself (``relay._Exchange``, which makes no result object per request).
    ``request_body`` and ``response_body`` are there for kinds that capture them, the answer's
    only when it is complete and successful."""

    @property
    def status(self) -> int: ...

    @property
    def bytes_in(self) -> int: ...

    @property
    def bytes_out(self) -> int: ...

    @property
    def request_body(self) -> bytes | None: ...

    @property
    def response_body(self) -> bytes | None: ...


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


class UsageMeter:
    """Counts per tenant and UTC hour; collects billable events by natural id."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._hours: dict[tuple[str, int], _HourUsage] = {}
        # Each tenant's counts of the hour counted in, by tenant id alone: what every request
        # finds (a tuple key built and hashed per request cost ~1,000 instructions).
        self._this_hour: dict[str, _HourUsage] = {}
        self._events: dict[tuple[str, str, str], tuple[int, float]] = {}
        self._window_start = clock()
        self._hour_start = int(self._window_start) // 3600 * 3600  # of the hour counted in
        # Its bounds as floats: ``now`` (a float) compared with an int costs ~4× as much.
        self._hour_from = float(self._hour_start)
        self._hour_to = self._hour_from + 3600.0
        self._month = _Month(self._window_start)
        # Active users already sent this month: each is reported once per month per proxy.
        self._reported_active: set[tuple[str, str, str]] = set()  # tenant, month, user

    def now(self) -> float:
        return self._clock()

    def record_request(
        self, tenant_id: str, bytes_in: int, bytes_out: int, *, media_egress: bool = False
    ) -> None:
        """Count a request in its tenant's current UTC hour (runs for every request)."""
        now = self._clock()
        if not self._hour_from <= now < self._hour_to:  # another hour (or the clock went back)
            self._hour_start = int(now) // 3600 * 3600
            self._hour_from = float(self._hour_start)
            self._hour_to = self._hour_from + 3600.0
            self._this_hour = {}
        usage = self._this_hour.get(tenant_id)
        if usage is None:
            key = (tenant_id, self._hour_start)
            usage = self._hours.get(key)
            if usage is None:
                usage = self._hours[key] = _HourUsage()
            self._this_hour[tenant_id] = usage
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
        if not month.start <= now < month.end:
            month = _Month(now)
            if now >= self._month.end:  # a new month began: last month's reports are done
                self._month = month
                self._reported_active.clear()
        key = (tenant_id, month.label, user_id)
        if key in self._reported_active:
            return
        self._reported_active.add(key)
        natural_id = f"{month.label}|{user_id}"
        self._events[(tenant_id, Meter.ACTIVE_USERS.value, natural_id)] = (1, now)

    def drain(self) -> dict[str, object] | None:
        """Take everything counted so far as one batch payload (None when idle)."""
        hours, self._hours = self._hours, {}
        self._this_hour = {}
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


# The members compared with on every request, as module constants: on Python 3.11 each
# ``Kind.X`` or ``Meter.X`` inside a function goes through ``EnumType.__getattr__`` (~1,000
# instructions, measured with benchmarks/proxy_instructions_bench.py), a global does not.
_SEND, _SEND_CALL_INVITE, _RTC_MEMBER = Kind.SEND, Kind.SEND_CALL_INVITE, Kind.RTC_MEMBER
_UPLOAD, _UPLOAD_ASYNC, _MEDIA_EGRESS = Kind.UPLOAD, Kind.UPLOAD_ASYNC, Kind.MEDIA_EGRESS
_LOGIN, _WHOAMI = Kind.LOGIN, Kind.WHOAMI
_MESSAGES, _CALLS, _MEDIA_BYTES = Meter.MESSAGES, Meter.CALLS, Meter.MEDIA_BYTES

# The kinds whose answers name no billable event (most requests): ``_record_events`` is not
# asked. (Login is handled before; a new kind is asked by default.)
_NAMES_NO_EVENTS = (Kind.OTHER, Kind.MEDIA_EGRESS, Kind.WHOAMI)  # `in` by identity, no hashing


class ExchangeMeter:
    """What one forwarded client exchange bills: requests and bytes always; billable events
    and the active user only from a successful answer."""

    def __init__(self, meter: UsageMeter, token_users: TokenUsers) -> None:
        self._meter = meter
        self._token_users = token_users

    def record(self, route: Route, scope: Scope, path: str, kind: Kind, result: Outcome) -> None:
        """Count the exchange of ``scope`` (its raw ``path``, of ``kind`` from
        ``billable.kind_of``) with the tenant of ``route``, which ended with ``result``."""
        self.record_with_token(route, access_token(scope), path, kind, result)

    def record_with_token(
        self,
        route: Route,
        token: str | None,
        path: str,
        kind: Kind,
        result: Outcome,
        *,
        user: str | None = None,
    ) -> str | None:
        """``record``, for a caller that knows the request's access token already (the fast
        lane reads it once per connection's header lines) and perhaps its user (``user``: what
        this returned for the same tenant and token before). Returns the token's user when it
        is known, else None."""
        tenant = route.tenant_id
        ok = 200 <= result.status < 300
        self._meter.record_request(
            tenant, result.bytes_in, result.bytes_out, media_egress=ok and kind is _MEDIA_EGRESS
        )
        if not ok:
            return user
        if kind is _LOGIN:
            self._signed_in(tenant, result)
            return None
        if kind not in _NAMES_NO_EVENTS:
            self._record_events(tenant, path, kind, result)
        if user is not None:
            self._meter.record_active_user(tenant, user)
            return user
        if token is not None:
            return self._record_user(route, token, kind, result)
        return None

    def _record_events(self, tenant: str, path: str, kind: Kind, result: Outcome) -> None:
        """The billable events a successful answer (or request) names."""
        meter = self._meter
        if kind is _SEND or kind is _SEND_CALL_INVITE:
            if (event_id := billable.event_id(result.response_body)) is not None:
                meter.record_event(tenant, _MESSAGES, event_id)
                if kind is _SEND_CALL_INVITE:
                    meter.record_event(tenant, _CALLS, event_id)
        elif kind is _RTC_MEMBER:
            event_id = billable.event_id(result.response_body)
            if event_id is not None and billable.joins_call(result.request_body):
                meter.record_event(tenant, _CALLS, event_id)
        elif kind is _UPLOAD:
            answer = billable.json_object(result.response_body)
            if (uri := billable.string_field(answer, "content_uri")) is not None:
                meter.record_event(tenant, _MEDIA_BYTES, uri, result.bytes_in)
        elif kind is _UPLOAD_ASYNC:
            if (uri := billable.async_upload_uri(path)) is not None:
                meter.record_event(tenant, _MEDIA_BYTES, uri, result.bytes_in)

    def _signed_in(self, tenant: str, result: Outcome) -> None:
        """A login or registration carried credentials, not a token: the answer names the
        user of its new token."""
        answer = billable.json_object(result.response_body)
        user = billable.string_field(answer, "user_id")
        new_token = billable.string_field(answer, "access_token")
        if user is not None and new_token is not None:
            self._token_users.remember(tenant, new_token, user)
            self._meter.record_active_user(tenant, user)

    def _record_user(self, route: Route, token: str, kind: Kind, result: Outcome) -> str | None:
        """The token's user is active: known already, named by a whoami answer, or resolved
        in the background (and counted at the time of this request); the user when known."""
        tenant = route.tenant_id
        meter = self._meter
        user = self._token_users.get(tenant, token)
        if user is None and kind is _WHOAMI:
            answer = billable.json_object(result.response_body)
            if (user := billable.string_field(answer, "user_id")) is not None:
                self._token_users.remember(tenant, token, user)
        if user is not None:
            meter.record_active_user(tenant, user)
            return user
        at = meter.now()
        self._token_users.resolve_later(
            tenant, token, route.upstream, lambda found: meter.record_active_user(tenant, found, at)
        )
        return None


class UsageFlusher:
    def __init__(
        self,
        meter: UsageMeter,
        redis: aioredis.Redis,
        keys: RedisKeys,
        *,
        interval: float = 1.0,
        source: str | None = None,
        on_flushed: Callable[[], None] | None = None,
    ) -> None:
        self._meter = meter
        self._redis = redis
        self._keys = keys
        self._interval = interval
        self.source = source or f"proxy:{socket.gethostname()}:{os.getpid()}"
        self._queue: deque[tuple[str, str]] = deque()  # (batch_id, payload JSON)
        self._task: asyncio.Task[None] | None = None
        self._on_flushed = on_flushed  # called once per batch written

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
            if self._on_flushed is not None:
                self._on_flushed()
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush_once()
