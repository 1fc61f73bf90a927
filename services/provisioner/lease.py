"""A per-tenant lease in Redis: two workers never act on one tenant at once."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

log = logging.getLogger(__name__)

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class Lease:
    def __init__(self, client: redis.Redis, key: str, *, ttl_s: float = 120.0) -> None:
        self._client = client
        self._key = key
        self._ttl_ms = int(ttl_s * 1000)
        self._token = secrets.token_hex(16)
        self._released = False

    def acquire(self) -> bool:
        return bool(self._client.set(self._key, self._token, nx=True, px=self._ttl_ms))

    def renew(self) -> bool:
        return bool(self._client.eval(_RENEW, 1, self._key, self._token, self._ttl_ms))

    @contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Renew the lease every third of its TTL while the block runs: the TTL can then be
        short, so a holder that dies (kill -9) frees the tenant soon, yet a live holder never
        loses it however long its work takes."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self._ttl_ms / 3000):
                try:
                    if not self.renew():
                        log.warning("lease %s expired under its holder", self._key)
                except redis.RedisError as exc:
                    log.warning("lease %s not renewed: %s", self._key, type(exc).__name__)

        keeper = threading.Thread(target=renew, name=f"lease-keeper {self._key}", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            # Bounded: a renewal stuck on an unreachable Redis must not hold up the task (a
            # late renewal is harmless: it only extends a lease that still carries our token).
            keeper.join(timeout=5)

    def release(self) -> None:
        self._released = True
        self._client.eval(_RELEASE, 1, self._key, self._token)

    def is_held_by_anyone(self) -> bool:
        return bool(self._client.exists(self._key))


@contextmanager
def kept_alive_together(leases: list[Lease], *, ttl_s: float) -> Iterator[None]:
    """``kept_alive`` for many leases from one thread (the sleep pass holds one per homeserver
    it stops, possibly hundreds): each is renewed every third of ``ttl_s`` (their TTL) until it
    is released or the block ends, however long the others' work takes. ``leases`` may grow
    while the block runs: a lease appended is renewed from the next round on, so a holder can
    start the keeper before it takes its first lease and keep the TTL short."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl_s / 3):
            for lease in list(leases):
                if lease._released or stop.is_set():
                    continue
                try:
                    if not lease.renew() and not lease._released:
                        log.warning("lease %s expired under its holder", lease._key)
                except redis.RedisError as exc:
                    log.warning("lease %s not renewed: %s", lease._key, type(exc).__name__)

    keeper = threading.Thread(target=renew, name="lease-keeper (many)", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join(timeout=5)
