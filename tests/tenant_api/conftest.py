from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from platform_core.settings import get_settings
from tenant_api.main import create_app
from tests.conftest import auth


def client_address() -> str:
    """A fresh client address (TEST-NET-2/benchmarking range): the API keeps failure budgets
    per address, so each test gets its own budget."""
    return f"198.18.{random.randrange(256)}.{random.randrange(1, 255)}"


def api_client(app: object, address: str | None = None, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address or client_address(), 40000))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers)


@pytest.fixture
async def api(platform_env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """The tenant API in-process (real database and broker), as an operator."""
    app = create_app()
    async with api_client(app, **auth()) as c:
        yield c


@pytest.fixture
def tuned_settings(platform_env: dict[str, str]) -> Iterator[object]:
    """``tuned_settings(C3_NAME="value", …)``: C3_* settings for the rest of the test."""
    saved: dict[str, str | None] = {}

    def tune(**values: str) -> None:
        for name, value in values.items():
            saved.setdefault(name, os.environ.get(name))
            os.environ[name] = value
        get_settings.cache_clear()

    yield tune
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    get_settings.cache_clear()
