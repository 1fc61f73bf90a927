"""Portal sessions: a random id in an HttpOnly cookie, the session itself in Redis.

Why server-side rather than a signed cookie: the session holds the person's API tokens (the
same access and refresh token ``POST /v1/auth/token`` gives them), which must never reach the
browser; sign-out deletes the record, so a copied cookie is dead at once; and every API replica
shares Redis already. The record is encrypted (``SecretBox``, keyed from ``C3_SECRET_KEY``) and
stored under a digest of the id, so a Redis dump yields neither a usable cookie nor a token.

A record lives ``C3_PORTAL_SESSION_IDLE_S`` past its last use and never beyond
``C3_PORTAL_SESSION_MAX_S`` after it was made. An anonymous record (no tokens) backs the sign-in
form's CSRF token; signing in replaces it with a new id (no session fixation).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from fastapi import Request

from platform_core.crypto import SecretBox
from platform_core.errors import TemporaryError
from platform_core.redis import async_client, keys_for
from platform_core.settings import Settings

T = TypeVar("T")

COOKIE = "c3_portal"


@dataclass
class PortalSession:
    """One browser's sign-in. ``flash``: messages for the next page (shown once)."""

    csrf_token: str
    created_at: float
    access_token: str | None = None
    refresh_token: str | None = None
    email: str | None = None
    flash: list[dict[str, Any]] = field(default_factory=list)

    @property
    def signed_in(self) -> bool:
        return self.access_token is not None


def _new_id() -> str:
    return secrets.token_urlsafe(32)


def cookie_is_secure(request: Request, settings: Settings) -> bool:
    """Secure when the browser reached us over TLS: the request's own scheme, or the public
    URL the API is configured with behind a TLS-terminating load balancer (the same rule as
    the absolute URLs the API hands out, ``tenant_api.urls``)."""
    if request.url.scheme == "https":
        return True
    return bool(settings.api_public_url and settings.api_public_url.startswith("https://"))


class SessionStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: aioredis.Redis = async_client(settings)
        self.prefix = f"{keys_for(settings).namespace}:portal:session:"
        self.box = SecretBox(settings.require_secret_key())

    def _key(self, session_id: str) -> str:
        return self.prefix + hashlib.sha256(session_id.encode()).hexdigest()

    def _ttl(self, record: PortalSession) -> int:
        left = int(record.created_at + self.settings.portal_session_max_s - time.time())
        return min(self.settings.portal_session_idle_s, left)

    async def load(self, session_id: str | None) -> PortalSession | None:
        if not session_id or len(session_id) > 100:
            return None
        raw = await _run(self.client.get(self._key(session_id)))
        if raw is None:
            return None
        try:
            return PortalSession(
                **self.box.decrypt_json(raw if isinstance(raw, str) else raw.decode())
            )
        except (ValueError, TypeError):
            return None  # written under another secret key: as good as expired

    async def save(self, session_id: str, record: PortalSession) -> bool:
        """Store (and extend the idle time of) a session; False when it is past its maximum."""
        ttl = self._ttl(record)
        if ttl <= 0:
            await self.forget(session_id)
            return False
        token = self.box.encrypt_json(asdict(record))
        await _run(self.client.set(self._key(session_id), token, ex=ttl))
        return True

    async def create(self, record: PortalSession) -> str:
        session_id = _new_id()
        await self.save(session_id, record)
        return session_id

    async def forget(self, session_id: str) -> None:
        await _run(self.client.delete(self._key(session_id)))

    async def refresh_lock(self, session_id: str) -> bool:
        """One token refresh per session at a time (a refresh token works once)."""
        key = self._key(session_id) + ":refreshing"
        return bool(await _run(self.client.set(key, "1", nx=True, ex=10)))

    async def release_refresh_lock(self, session_id: str) -> None:
        await _run(self.client.delete(self._key(session_id) + ":refreshing"))


def anonymous_session() -> PortalSession:
    return PortalSession(csrf_token=secrets.token_urlsafe(32), created_at=time.time())


async def _run(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except (aioredis.RedisError, OSError) as exc:
        raise TemporaryError(
            "portal sessions are unavailable right now (Redis); retry shortly", retry_after=5
        ) from exc
