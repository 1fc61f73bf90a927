"""Shared fixtures: a real database (PostgreSQL from C3_TEST_DATABASE_URL, else SQLite) and a
real Redis (C3_TEST_REDIS_URL, else an embedded one), configured through C3_* settings.

Each test session gets its own database and Redis namespace, so runs never see each other.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from c3.local_run import EmbeddedRedis
from platform_core.db import sync_engine
from platform_core.migrate import upgrade
from platform_core.settings import get_settings
from tests.helpers.environment import (
    OPERATOR_TOKEN,
    clear_namespace,
    fresh_database,
    platform_fixture,
)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("c3-data")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("C3_TEST_REDIS_URL")
    if external:
        yield external
        return
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield embedded.start()
    embedded.stop()


@pytest.fixture(scope="session")
def database_url(data_dir: Path) -> Iterator[str]:
    with fresh_database(data_dir) as url:
        yield url


@pytest.fixture(scope="session")
def platform_env(database_url: str, redis_url: str, data_dir: Path) -> Iterator[dict[str, str]]:
    """C3_* settings for this test session, applied to this process and handed to children."""
    env = {
        "C3_MODE": "local",
        "C3_DATA_DIR": str(data_dir),
        "C3_DATABASE_URL": database_url,
        "C3_REDIS_URL": redis_url,
        "C3_REDIS_NAMESPACE": f"c3t{uuid.uuid4().hex[:10]}",
        "C3_SECRET_KEY": secrets.token_urlsafe(32),
        "C3_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "C3_BASE_DOMAIN": "c3.test",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    upgrade(database_url)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()
    sync_engine().dispose()
    sync_engine.cache_clear()


@pytest.fixture(scope="session")
def redis_client(platform_env: dict[str, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(platform_env["C3_REDIS_URL"])
    yield client
    client.close()
    clear_namespace(platform_env["C3_REDIS_URL"], platform_env["C3_REDIS_NAMESPACE"])


platform = platform_fixture(
    "c3-platform",
    "The whole platform for end-to-end tests.",
    scope="session",
    # Billed usage vs the homeservers' own records, often enough to watch in tests.
    C3_USAGE_RECONCILE_INTERVAL_S="2",
)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """A headless Debian chromium for one module's page tests (Playwright, sync API). Module
    scope, not session: while Playwright's sync API is open it keeps an event loop running, and
    the async tests of later modules could not start theirs."""
    from tests.helpers.browser import chromium

    with chromium() as launched:
        yield launched


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real S3-compatible server (moto's standalone server) on loopback for the session."""
    from tests.helpers.object_store import moto_server

    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def no_zygote_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The Synapse zygotes this session's data directories started end with it (a platform's
    shutdown stops its own; a test that drives a LocalBackend directly may leave one)."""
    yield
    import psutil

    root = str(tmp_path_factory.getbasetemp())
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "provisioner.backends.zygote_server" in cmdline and any(
            arg.startswith(root) for arg in cmdline
        ):
            with contextlib.suppress(psutil.Error):
                proc.terminate()
