"""A per-tenant lease in Redis: two workers never act on one tenant at once."""

from __future__ import annotations

import secrets

import redis

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

    def acquire(self) -> bool:
        return bool(self._client.set(self._key, self._token, nx=True, px=self._ttl_ms))

    def renew(self) -> bool:
        return bool(self._client.eval(_RENEW, 1, self._key, self._token, self._ttl_ms))

    def release(self) -> None:
        self._client.eval(_RELEASE, 1, self._key, self._token)

    def is_held_by_anyone(self) -> bool:
        return bool(self._client.exists(self._key))
