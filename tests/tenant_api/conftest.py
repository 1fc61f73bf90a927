from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tenant_api.main import create_app
from tests.conftest import auth


@pytest.fixture
async def api(platform_env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """The tenant API in-process (real database and broker), as an operator."""
    app = create_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=auth()) as c:
        yield c
