"""Who made a request: access token → Matrix user id, for monthly active users.

Learned for free from login/register and whoami answers; a token seen for the first time is
resolved once with a ``whoami`` call off the request path, at most ``MAX_RESOLVING`` at once: a
crowd of new tokens (thousands of long-polls answered together) waits its turn instead of
opening thousands of homeserver connections at once (73 MiB of the proxy's memory for 5,000 in
``benchmarks/longpoll_bench.py``). Tokens are kept only as keyed
hashes, and the cache is bounded (least recently used entries go first).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal
from urllib.parse import parse_qs

import aiohttp

from homeserver_proxy.asgi import Scope

log = logging.getLogger(__name__)

Resolve = Callable[[str, str], Awaitable[str | None]]  # (upstream, token) -> user id
MAX_RESOLVING = 32
OnUser = Callable[[str], None]


async def whoami(session: aiohttp.ClientSession, upstream: str, token: str) -> str | None:
    """The user an access token belongs to, or None if the homeserver refuses it."""
    async with session.get(
        upstream + "/_matrix/client/v3/account/whoami",
        headers={"Authorization": f"Bearer {token}"},
        timeout=aiohttp.ClientTimeout(total=10, sock_connect=5),
    ) as response:
        if response.status != 200:
            return None
        payload = await response.json(content_type=None)
    user = payload.get("user_id") if isinstance(payload, dict) else None
    return user if isinstance(user, str) else None


def access_token(scope: Scope) -> str | None:
    """The client's access token: ``Authorization: Bearer`` or the ``access_token`` query."""
    token = header_token(scope["headers"])
    return query_token(scope.get("query_string", b"")) if token is False else token


def header_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None | Literal[False]:
    """The token of an ``Authorization: Bearer`` header (None for another scheme or an empty
    one), or False when there is no ``Authorization`` header (then the query may hold one)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    return False


def query_token(query: bytes) -> str | None:
    """The ``access_token`` query parameter (deprecated in Matrix, still accepted)."""
    if b"access_token=" in query:
        values = parse_qs(query.decode("latin-1")).get("access_token")
        return values[0] if values else None
    return None


class TokenUsers:
    def __init__(
        self, resolve: Resolve, *, max_entries: int = 200_000, max_resolving: int = MAX_RESOLVING
    ) -> None:
        self._resolve = resolve
        self._resolving = asyncio.Semaphore(max_resolving)
        self._max_entries = max_entries
        self._users: OrderedDict[bytes, str] = OrderedDict()
        self._pending: dict[bytes, asyncio.Task[None]] = {}
        self._salt = os.urandom(16)  # per process: the hashes mean nothing outside it

    def _key(self, tenant_id: str, token: str) -> bytes:
        return hashlib.blake2b(
            f"{tenant_id}\0{token}".encode(), digest_size=20, key=self._salt
        ).digest()

    def get(self, tenant_id: str, token: str) -> str | None:
        key = self._key(tenant_id, token)
        user = self._users.get(key)
        if user is not None:
            self._users.move_to_end(key)
        return user

    def remember(self, tenant_id: str, token: str, user_id: str) -> None:
        key = self._key(tenant_id, token)
        self._users[key] = user_id
        self._users.move_to_end(key)
        while len(self._users) > self._max_entries:
            self._users.popitem(last=False)

    def resolve_later(self, tenant_id: str, token: str, upstream: str, on_user: OnUser) -> None:
        """Find the token's user in the background; ``on_user`` is called once it is known."""
        key = self._key(tenant_id, token)
        if key in self._pending:
            return

        async def run() -> None:
            try:
                async with self._resolving:
                    user = await self._resolve(upstream, token)
            except Exception:  # the next request with this token tries again
                log.warning("whoami failed for a token of tenant %s", tenant_id, exc_info=True)
                return
            finally:
                self._pending.pop(key, None)
            if user is not None:
                self.remember(tenant_id, token, user)
                on_user(user)

        self._pending[key] = asyncio.create_task(run(), name="whoami")

    async def settle(self, deadline_s: float) -> None:
        """Let resolutions in flight finish (at shutdown, before the last usage flush)."""
        pending = list(self._pending.values())
        if pending:
            await asyncio.wait(pending, timeout=deadline_s)
