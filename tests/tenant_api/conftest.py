from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from platform_core.redis import keys_for
from platform_core.settings import get_settings
from tenant_api.main import create_app
from tests.helpers.api import api_client
from tests.helpers.environment import auth, delete_keys


@pytest.fixture(autouse=True)
def unspent_address_budgets(platform_env: dict[str, str]) -> None:
    """Each test starts with its client address's failed-credential budget unspent. The tests
    share one address and one Redis namespace: the failed credentials of earlier tests (the
    schemathesis run sends many) could otherwise spend it for a later one, which then got 429
    (seen once in CI, in a webhooks test). Tests of the budget itself spend it in the test."""
    delete_keys(platform_env["C3_REDIS_URL"], keys_for(get_settings()).auth_failures("*"))


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
