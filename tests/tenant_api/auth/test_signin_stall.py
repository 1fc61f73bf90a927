"""Password hashing (argon2, deliberately slow) never runs on the event loop: while sign-ins
are being checked the API keeps answering everyone else, and a flood of them gets a quick
503 instead of an ever longer queue. (Latency numbers: benchmarks/signin_stall_bench.py.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import httpx
import pytest

from platform_core.auth import passwords
from platform_core.settings import get_settings
from tests.helpers.api import assert_problem, email, sign_in
from tests.helpers.platform import poll_async


async def wait_for(check: Callable[[], bool], what: str) -> None:
    async def checked() -> bool:
        return check()

    await poll_async(checked, timeout=10, what=what)


class GatedHasher:
    """The real argon2 hasher, but ``verify`` waits at a gate the test opens (so "a hash is in
    progress" is a state the test controls, not a race it hopes to win)."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.entered = threading.Event()
        self.gate = threading.Event()

    def verify(self, password_hash: str, password: str) -> bool:
        self.entered.set()
        # Bounded: if verification ever runs on the event loop again, the loop is stuck here
        # for these seconds and the test fails on what it observes, instead of hanging.
        self.gate.wait(timeout=10)
        return self.real.verify(password_hash, password)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


async def test_the_api_answers_while_a_password_is_being_hashed(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    gated = GatedHasher(passwords._hasher)
    monkeypatch.setattr(passwords, "_hasher", gated)
    signing_in = asyncio.create_task(sign_in(api, email(), "some wrong password"))
    await wait_for(gated.entered.is_set, "the password check to start")

    health = await api.get("/healthz")
    assert health.status_code == 200
    tenants = await api.get("/v1/tenants")
    assert tenants.status_code == 200
    assert not signing_in.done(), "the API answered only after the hash had finished"

    gated.gate.set()
    assert (await signing_in).status_code == 401


async def test_a_flood_of_sign_ins_waits_for_hashing_slots_then_gets_a_quick_503(
    api: httpx.AsyncClient, tuned_settings: Callable[..., None]
) -> None:
    tuned_settings(C3_PASSWORD_HASH_CONCURRENCY="2", C3_PASSWORD_HASH_MAX_WAITING="1")
    limiter = passwords.hashing_limiter(get_settings())
    holders = [object(), object()]
    for holder in holders:  # both hashing slots busy
        await limiter.acquire_on_behalf_of(holder)
    try:
        queued = asyncio.create_task(sign_in(api, email(), "some wrong password"))
        await wait_for(lambda: limiter.statistics().tasks_waiting == 1, "a queued sign-in")
        assert (await api.get("/healthz")).status_code == 200

        refused = await sign_in(api, email(), "some wrong password")
        assert_problem(refused, 503, "too many sign-ins")
        assert refused.headers["Retry-After"] == "1"
        assert not queued.done()
    finally:
        for holder in holders:
            limiter.release_on_behalf_of(holder)
    assert (await queued).status_code == 401
