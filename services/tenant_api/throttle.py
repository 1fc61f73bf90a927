"""Failure budgets for credentials, kept in Redis so every API replica shares them.

Fixed windows: the first failure starts a window of ``*_window_s``; once ``*_max_failures``
failures are counted, the budget is spent until the window ends and the caller gets 429 with
Retry-After *before* anything is verified (a throttled request never hashes a password).
Two budgets: per account (sign-ins by email, so unknown emails are throttled alike) and per
client address (every failed credential: passwords, refresh tokens, API keys, access tokens,
the operator token). A successful sign-in clears only its own account's budget.

Also the sessions-revoked mark of accounts (disable, password reset): access tokens issued at
or before it are refused at once, on every replica.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import redis.asyncio as aioredis
from fastapi import Request

from platform_core.errors import TemporaryError, TooManyRequests
from platform_core.redis import RedisKeys, async_client, keys_for
from platform_core.settings import Settings

T = TypeVar("T")

# INCR, and start the window on the first failure (atomic: no counter without expiry).
_COUNT_FAILURE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


def client_address(request: Request) -> str:
    """The address failure budgets are kept for: the socket peer. (The one place to change
    if the API is ever deployed behind a trusted proxy that sets X-Forwarded-For.)"""
    return request.client.host if request.client else "unknown"


def _email_digest(settings: Settings, email: str) -> str:
    # Keyed, so Redis never holds the email addresses people tried.
    key = hashlib.sha256(settings.require_secret_key().encode()).digest()
    return hashlib.blake2b(
        email.strip().lower().encode(), key=key, digest_size=16, person=b"c3-signin"
    ).hexdigest()


@dataclass(frozen=True)
class Throttle:
    client: aioredis.Redis
    keys: RedisKeys
    settings: Settings

    @classmethod
    def for_settings(cls, settings: Settings) -> Throttle:
        return cls(async_client(settings), keys_for(settings), settings)

    async def ensure_address_allowed(self, address: str) -> None:
        await self._ensure_allowed(
            self.keys.auth_failures(address),
            self.settings.auth_address_max_failures,
            "too many failed credentials from your address",
        )

    async def ensure_signin_allowed(self, address: str, email: str) -> None:
        await self.ensure_address_allowed(address)
        await self._ensure_allowed(
            self.keys.signin_failures(_email_digest(self.settings, email)),
            self.settings.signin_account_max_failures,
            "too many failed sign-ins for this account",
        )

    async def count_address_failure(self, address: str) -> int:
        return await self._count(
            self.keys.auth_failures(address), self.settings.auth_address_window_s
        )

    async def count_signin_failure(self, address: str, email: str) -> bool:
        """Count a failed sign-in; True exactly when it spends the account's budget (the
        moment the account gets locked: once per lockout)."""
        await self.count_address_failure(address)
        failures = await self._count(
            self.keys.signin_failures(_email_digest(self.settings, email)),
            self.settings.signin_account_window_s,
        )
        return failures == self.settings.signin_account_max_failures

    async def forget_signin_failures(self, email: str) -> None:
        key = self.keys.signin_failures(_email_digest(self.settings, email))
        await self._run(self.client.delete(key))

    async def revoke_sessions(self, account_id: str) -> None:
        """Refuse every access token of the account issued up to now (they live at most
        ``access_token_ttl_s`` plus the verification leeway; the mark lives as long)."""
        await self._run(
            self.client.set(
                self.keys.sessions_revoked_at(account_id),
                int(time.time() * 1000),
                ex=self.settings.access_token_ttl_s + 60,
            )
        )

    async def sessions_revoked_at_ms(self, account_id: str) -> int | None:
        raw = await self._run(self.client.get(self.keys.sessions_revoked_at(account_id)))
        return int(raw) if raw is not None else None

    async def _ensure_allowed(self, key: str, budget: int, why: str) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.ttl(key)
            raw, ttl = await self._run(pipe.execute())
        if raw is not None and int(raw) >= budget:
            raise TooManyRequests(f"{why}; retry after {max(ttl, 1)} s", retry_after=ttl)

    async def _count(self, key: str, window_s: int) -> int:
        return int(await self._run(self.client.eval(_COUNT_FAILURE, 1, key, window_s)))

    @staticmethod
    async def _run(awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except (aioredis.RedisError, OSError) as exc:
            # Fail closed: without the shared budgets, credentials could be guessed freely.
            raise TemporaryError(
                "sign-in protection is unavailable right now (Redis); retry shortly",
                retry_after=5,
            ) from exc
