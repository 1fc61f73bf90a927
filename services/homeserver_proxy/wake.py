"""Sleeping homeservers at the proxy: record when each tenant was last served, hold the requests
of a sleeping (or restarting) homeserver while one wake is asked for, forward them once it is
healthy.

Two hooks in ``app``: ``ready(route)`` right before a request goes upstream (after the guard,
the limits and the admin wall, so a sleeping tenant is treated like an awake one), and
``after_failure(route, exc)`` when forwarding failed (an upstream that refused the connection
is asked to heal through the same wake).

The awake path costs two dict writes. Last-seen times are flushed to Redis once per interval
(``RedisKeys.homeserver_last_seen``, one HSET per flush, never a Redis call per request); the
worker's sleep pass reads them.

**How a wake is asked for.** The first request for a sleeping tenant in this process starts one
waiter task; every later request awaits the same task (at most ``C3_WAKE_TIMEOUT_S``). The
waiter sets ``RedisKeys.wake_requested`` with ``SET NX`` (expiring after the wake timeout), and
only the request that set it — at any replica — sends the Celery task ``wake_homeserver``: one
wake however many requests and replicas. Celery on the existing broker was chosen over a Redis
list the worker BLPOPs: the worker already consumes the broker with a blocking pop, so the
task starts within milliseconds when a worker process is free; acks_late redelivers it if a
worker dies; and no second consumer loop has to be run and supervised. The waiter then reads
the tenant's route from Redis every 50 ms until it is awake and the homeserver answers
``/health``, and hands the fresh route to every held request. A wake that fails or takes
longer than the timeout answers 503 ``M_UNKNOWN`` with ``Retry-After``; the request key has
expired by then, so the next request asks again.

**A held client that leaves.** ASGI tells of a disconnect only through ``receive``, so each held
request (and only a held one: the awake path starts no task) gets one small task that reads its
messages while it waits. A disconnect ends the hold at once with ``ClientGone``: its limiter slot
is freed and nothing goes upstream for it when the homeserver is up; the shared waiter goes on
for the others. The request body messages read meanwhile (at most ``_KEEP_BYTES``; a larger
upload is left unread and its client's leaving shows once it is forwarded) are handed back to the
forwarder through the ``receive`` that ``ready`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable

import aiohttp
import redis.asyncio as aioredis

from homeserver_proxy import errors
from homeserver_proxy.asgi import Message, Receive
from homeserver_proxy.forwarding import ClientGone
from platform_core.celery import TaskNames, send_task
from platform_core.redis import RedisKeys
from platform_core.routes import Route, host_field, read_route

log = logging.getLogger(__name__)

_POLL_S = 0.05
_HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=1.0)
# Request body a held request's watcher reads ahead (and keeps in memory) at most: the forwarder
# keeps bodies up to 1 MiB in memory too.
_KEEP_BYTES = 1024 * 1024


class Waker:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: RedisKeys,
        session: Callable[[], aiohttp.ClientSession],
        *,
        timeout_s: float,
        flush_interval_s: float,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._session = session
        self._timeout_s = timeout_s
        self._flush_interval_s = flush_interval_s
        self._seen: dict[str, float] = {}  # tenant id -> last request, since the last flush
        self._waits: dict[str, asyncio.Task[Route]] = {}  # one waiter per waking tenant
        self._healing: set[str] = set()  # awake tenants whose upstream refused a connection
        self._flusher: asyncio.Task[None] | None = None

    # Hooks (hot path) -------------------------------------------------------------------

    async def ready(self, route: Route, receive: Receive) -> tuple[Route, Receive]:
        """The route to forward by and the ``receive`` to read the request by: ``route`` and
        ``receive`` themselves when its homeserver is awake; otherwise, once it woke, the fresh
        route and a ``receive`` that first replays what was read while holding. Raises 503
        when it does not wake in time, ``ClientGone`` when the client leaves meanwhile."""
        tenant_id = route.tenant_id
        self._seen[tenant_id] = time.time()
        if not route.asleep and tenant_id not in self._healing:
            return route, receive
        return await self._held(route, receive)

    def awake(self, route: Route) -> bool:
        """``ready`` for the fast lane (``relay``): True (and the tenant seen) when its
        homeserver is awake and not healing, else False (the request goes through ``ready``)."""
        tenant_id = route.tenant_id
        if route.asleep or tenant_id in self._healing:
            return False
        self._seen[tenant_id] = time.time()
        return True

    def after_failure(self, route: Route, exc: errors.MatrixError) -> errors.MatrixError:
        """The error to answer for a failed forward: a refused connection asks for the wake
        that restarts the homeserver (later requests are held until it is back) and answers
        503 + Retry-After; anything else is answered as it is."""
        if not isinstance(exc, errors.UpstreamRefused):
            return exc
        if route.tenant_id not in self._healing:
            log.warning(
                "upstream of tenant %s refused a connection; asking for a restart", route.tenant_id
            )
            self._healing.add(route.tenant_id)
            self._waiter(route)
        return errors.homeserver_starting(retry_after_s=1)

    # Waking -----------------------------------------------------------------------------

    async def _held(self, route: Route, receive: Receive) -> tuple[Route, Receive]:
        waiter = self._waiter(route)
        client = _ClientWatch(receive)
        try:
            # Neither is cancelled by the wait: the waiter is shared with the other held
            # requests (and replicas' wakes), the watch is stopped below.
            await asyncio.wait(
                (waiter, client.left), timeout=self._timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            client.stop()
        if client.left.done() and not client.left.cancelled():
            raise ClientGone()
        if not waiter.done():
            raise errors.homeserver_starting(retry_after_s=2)  # not woken in time
        try:
            return waiter.result(), client.replay()
        except (TimeoutError, aioredis.RedisError, OSError):
            # Not woken in time, or Redis away (no wake can be asked for): retry later.
            raise errors.homeserver_starting(retry_after_s=2) from None

    def _waiter(self, route: Route) -> asyncio.Task[Route]:
        task = self._waits.get(route.tenant_id)
        if task is None or task.done():
            task = asyncio.create_task(self._wake(route), name=f"wake {route.tenant_id}")
            task.add_done_callback(_retrieve)
            self._waits[route.tenant_id] = task
        return task

    async def _wake(self, route: Route) -> Route:
        """Ask for the wake once (unless the fresh route says awake and ``/health`` answers
        already), then wait until both hold. Raises a Matrix error when the tenant is no
        longer served."""
        tenant_id = route.tenant_id
        field = host_field(route.server_name)
        deadline = time.monotonic() + self._timeout_s
        asked = False
        try:
            if tenant_id in self._healing:  # a refused connection: ask without looking first
                await self._ask(tenant_id)
                asked = True
            while time.monotonic() < deadline:
                if asked:
                    await asyncio.sleep(_POLL_S)
                current = await read_route(self._redis, self._keys, field)
                if current is None:
                    raise errors.unknown_tenant_host()
                if current.status != "active":
                    raise errors.tenant_unavailable(current.status)
                if not current.asleep and await self._healthy(current.upstream):
                    return current
                if not asked:
                    # Only now: this process's route table may have been a moment behind a
                    # wake that just ended (then the check above found it awake).
                    await self._ask(tenant_id)
                    asked = True
        finally:
            self._healing.discard(tenant_id)
        raise TimeoutError

    async def _ask(self, tenant_id: str) -> None:
        expires = max(1, math.ceil(self._timeout_s))
        if await self._redis.set(self._keys.wake_requested(tenant_id), b"1", nx=True, ex=expires):
            # Publishing to the broker is a blocking call: off the event loop.
            await asyncio.to_thread(send_task, TaskNames.WAKE_HOMESERVER, tenant_id)
            log.info("asked for a wake of tenant %s", tenant_id)

    async def _healthy(self, upstream: str) -> bool:
        try:
            async with self._session().get(upstream + "/health", timeout=_HEALTH_TIMEOUT) as answer:
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    # Last seen ----------------------------------------------------------------------------

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_every_interval(), name="last-seen-flusher")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        for task in self._waits.values():
            task.cancel()
        with contextlib.suppress(aioredis.RedisError, OSError):
            await self.flush()

    async def flush(self) -> None:
        """Write the last-seen times counted since the last flush (one HSET)."""
        if not self._seen:
            return
        seen, self._seen = self._seen, {}
        try:
            await self._redis.hset(self._keys.homeserver_last_seen, mapping=seen)  # type: ignore[arg-type]
        except (aioredis.RedisError, OSError):
            # Kept for the next flush (newer times win): a tenant is never put to sleep for
            # a Redis hiccup of ours.
            for tenant_id, at in seen.items():
                self._seen[tenant_id] = max(at, self._seen.get(tenant_id, 0.0))
            raise

    async def _flush_every_interval(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            try:
                await self.flush()
            except (aioredis.RedisError, OSError) as exc:
                log.warning("last-seen flush deferred (%s)", type(exc).__name__)


class _ClientWatch:
    """Reads a held request's ``receive`` in a task of its own until the client disconnects
    (``left`` is then done), keeping the body messages read on the way for ``replay``."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._kept: list[Message] = []
        self.left: asyncio.Task[None] = asyncio.create_task(self._until_disconnect())
        self.left.add_done_callback(_retrieve)

    async def _until_disconnect(self) -> None:
        kept = 0
        while kept <= _KEEP_BYTES:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return
            self._kept.append(message)
            kept += len(message.get("body", b""))
        # A large upload: the rest is left unread (the server stops reading the socket), so
        # a disconnect can no longer be seen here; the forwarder sees it.
        await asyncio.get_running_loop().create_future()

    def stop(self) -> None:
        # Cancelling a pending ``receive`` loses nothing: servers hand a message over only
        # when it returns (uvicorn keeps the body read meanwhile for the next call).
        self.left.cancel()

    def replay(self) -> Receive:
        """``receive`` as the forwarder should read it: the kept messages first."""
        if not self._kept:
            return self._receive
        kept, receive = self._kept, self._receive

        async def replaying() -> Message:
            return kept.pop(0) if kept else await receive()

        return replaying


def _retrieve(task: asyncio.Task[Route] | asyncio.Task[None]) -> None:
    """A waiter nobody awaits any more (its requests timed out) must not log its error as
    never retrieved."""
    if not task.cancelled():
        task.exception()
