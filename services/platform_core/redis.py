"""Redis connection helpers and every key, stream and channel name the platform uses."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass

import redis.asyncio as aioredis

from platform_core.settings import Settings


@dataclass(frozen=True)
class RedisKeys:
    namespace: str

    @property
    def routes(self) -> str:
        """Hash: ``host:<host>`` / ``slug:<slug>`` -> route JSON (see platform_core.routes)."""
        return f"{self.namespace}:routes"

    @property
    def routes_changed(self) -> str:
        """Pub/sub channel: a message (the changed field, or ``*``) per route table change."""
        return f"{self.namespace}:routes:changed"

    @property
    def usage_stream(self) -> str:
        """Stream of usage batches written by proxies, applied by the usage consumer."""
        return f"{self.namespace}:usage"

    @property
    def usage_dead(self) -> str:
        """Stream of usage entries the consumer could not parse, kept for inspection."""
        return f"{self.namespace}:usage:dead"

    @property
    def usage_group(self) -> str:
        return "usage-appliers"

    @property
    def archives_purged(self) -> str:
        """Set of deleted tenants' ids whose archives the reconciler purged after retention
        (it asks the object store no more for them; LIST requests cost per tenant and pass)."""
        return f"{self.namespace}:archives:purged"

    @property
    def usage_check_passes(self) -> str:
        """Counter: usage-check passes so far; each checks the next slice of the tenants
        (provisioner.usage_reconciliation)."""
        return f"{self.namespace}:usage:check-passes"

    @property
    def reconcile_metrics(self) -> str:
        """Hash: reconcile passes, actions and the last pass's time (platform_core.metrics)."""
        return f"{self.namespace}:metrics:reconcile"

    @property
    def usage_metrics(self) -> str:
        """Hash: usage consumer counters, e.g. dead-lettered and dropped entries
        (platform_core.metrics)."""
        return f"{self.namespace}:metrics:usage"

    @property
    def operation_metrics(self) -> str:
        """Hash: lifecycle operation attempts, failures and durations by kind
        (platform_core.metrics)."""
        return f"{self.namespace}:metrics:operations"

    def worker_reply(self, request_id: str) -> str:
        """List (expires a minute after it is written): a worker's answer to one question the
        API asked it (platform_core.worker_requests)."""
        return f"{self.namespace}:worker-reply:{request_id}"

    @property
    def homeserver_last_seen(self) -> str:
        """Hash: tenant id -> Unix time of the last request a proxy forwarded (or held) for it,
        client or federation; written by each proxy once per flush interval, read by the sleep
        pass (provisioner.hibernation)."""
        return f"{self.namespace}:homeservers:last-seen"

    @property
    def homeserver_awake_until(self) -> str:
        """Hash: tenant id -> Unix time before which its homeserver is not put to sleep (the
        daily maintenance window's wake)."""
        return f"{self.namespace}:homeservers:awake-until"

    @property
    def sleep_metrics(self) -> str:
        """Hash: sleep and wake counters (platform_core.metrics)."""
        return f"{self.namespace}:metrics:sleep"

    @property
    def maintenance_windows(self) -> str:
        """Sorted set: maintenance windows with sleepers still to wake, by the Unix time each
        opened (provisioner.hibernation)."""
        return f"{self.namespace}:maintenance:windows"

    def maintenance_opened(self, window: str) -> str:
        """String (expires after a few days): this maintenance window has opened; it never
        opens twice."""
        return f"{self.namespace}:maintenance:{window}:opened"

    def maintenance_todo(self, window: str) -> str:
        """Set: the tenants this maintenance window has yet to wake (its snapshot of the
        sleepers when it opened; each leaves it once, when its wake is sent)."""
        return f"{self.namespace}:maintenance:{window}:todo"

    @property
    def maintenance_slots(self) -> str:
        """Hash: tenant id -> JSON of a homeserver awake (or being woken) for maintenance; its
        size is bounded by C3_SLEEP_MAINTENANCE_CONCURRENCY."""
        return f"{self.namespace}:maintenance:slots"

    def wake_requested(self, tenant_id: str) -> str:
        """String (SET NX, expires after the proxy's wake timeout): a wake of this tenant's
        homeserver was asked for; the first proxy request to set it sends the wake task."""
        return f"{self.namespace}:wake:{tenant_id}"

    def tenant_lease(self, tenant_id: str) -> str:
        return f"{self.namespace}:lease:tenant:{tenant_id}"

    def signin_failures(self, email_digest: str) -> str:
        """Counter (expires with its window): failed sign-ins for one email (keyed hash)."""
        return f"{self.namespace}:throttle:signin:{email_digest}"

    def auth_failures(self, address: str) -> str:
        """Counter (expires with its window): failed credentials from one client address."""
        return f"{self.namespace}:throttle:address:{address}"

    def api_rate(self, bucket: str) -> str:
        """GCRA state of one credential's (or client address's) API request rate
        (tenant_api.rate_limit): the theoretical arrival time in microseconds; expires when
        the bucket is full again."""
        return f"{self.namespace}:ratelimit:{bucket}"

    def context_external(self, token_digest: str) -> str:
        """String (expires with the credential), by the SHA-256 of an external participant's
        access token: ``<user id> <room id>``, for the proxy's confinement
        (homeserver_proxy.confinement). Deleted when the participant is cut off."""
        return f"{self.namespace}:contexts:external:{token_digest}"

    def context_media(self, room_id: str) -> str:
        """Set: the mxc URIs posted in a context room (written by the application service
        receiver): the only media its external participants may fetch."""
        return f"{self.namespace}:contexts:media:{room_id}"

    def sessions_revoked_at(self, account_id: str) -> str:
        """Milliseconds since the epoch: access tokens of this account issued at or before it
        are refused (disable, password reset). Expires once all such tokens have expired."""
        return f"{self.namespace}:sessions-revoked:{account_id}"


def keys_for(settings: Settings) -> RedisKeys:
    return RedisKeys(settings.redis_namespace)


# One asyncio client per event loop and URL: a redis.asyncio connection belongs to the loop
# that opened it (tests run one loop per test; servers one loop per process).
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aioredis.Redis]]
_async_clients = weakref.WeakKeyDictionary()


def async_client(settings: Settings) -> aioredis.Redis:
    """The shared asyncio Redis client of the running event loop (created on first use)."""
    per_loop = _async_clients.setdefault(asyncio.get_running_loop(), {})
    url = settings.require_redis_url()
    client = per_loop.get(url)
    if client is None:
        client = per_loop[url] = aioredis.Redis.from_url(url, socket_timeout=5)
    return client


async def close_async_clients() -> None:
    """Close the running loop's clients (at service shutdown)."""
    for client in _async_clients.pop(asyncio.get_running_loop(), {}).values():
        await client.aclose()
