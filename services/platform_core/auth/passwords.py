"""Password hashing: argon2id with the library's current parameters (rehash on login when
they change).

argon2 is deliberately slow (tens of milliseconds of CPU); on the event loop one anonymous
client would stall every request of the API. The ``*_off_loop`` functions run it in worker
threads, at most ``C3_PASSWORD_HASH_CONCURRENCY`` at once, and refuse quickly (``Busy``) when
more than ``C3_PASSWORD_HASH_MAX_WAITING`` are already queued.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TypeVar

import anyio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from platform_core.errors import Busy
from platform_core.settings import Settings

_hasher = PasswordHasher()
# Verified against when the account does not exist, so a login for an unknown email takes as
# long as one with a wrong password (no account enumeration by timing).
_DUMMY_HASH = _hasher.hash("c3-no-such-account")

T = TypeVar("T")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


# A CapacityLimiter belongs to one event loop; keep one per loop (tests run several loops).
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter]
_limiters = weakref.WeakKeyDictionary()


def hashing_limiter(settings: Settings) -> anyio.CapacityLimiter:
    """The running loop's limiter of concurrent password hashes."""
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(settings.password_hash_concurrency)
    return limiter


async def _off_loop(settings: Settings, function: Callable[..., T], *args: str | None) -> T:
    limiter = hashing_limiter(settings)
    if limiter.available_tokens == 0 and (
        limiter.statistics().tasks_waiting >= settings.password_hash_max_waiting
    ):
        raise Busy("too many sign-ins are being checked right now; retry in a moment")
    return await anyio.to_thread.run_sync(function, *args, limiter=limiter)


async def hash_password_off_loop(settings: Settings, password: str) -> str:
    return await _off_loop(settings, hash_password, password)


async def verify_password_off_loop(
    settings: Settings, password_hash: str | None, password: str
) -> bool:
    return await _off_loop(settings, verify_password, password_hash, password)
