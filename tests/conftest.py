"""Shared fixtures: a real database (PostgreSQL from C3_TEST_DATABASE_URL, else SQLite) and a
real Redis (C3_TEST_REDIS_URL, else an embedded one), configured through C3_* settings.

Each test session gets its own database and Redis namespace, so runs never see each other.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from c3.local_run import EmbeddedRedis
from platform_core.db import sync_engine
from platform_core.migrate import upgrade
from platform_core.settings import get_settings
from tests.platform import RunningPlatform, start_platform

OPERATOR_TOKEN = "c3op_test_" + secrets.token_urlsafe(16)


def _create_postgres_database(base_url: str) -> tuple[str, str]:
    url = make_url(base_url).set(drivername="postgresql+psycopg")
    name = f"c3_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False), name


def _drop_postgres_database(base_url: str, name: str) -> None:
    url = make_url(base_url).set(drivername="postgresql+psycopg")
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


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


@contextmanager
def fresh_database(directory: Path) -> Iterator[str]:
    """A new, empty platform database on the test PostgreSQL (or a SQLite file)."""
    external = os.environ.get("C3_TEST_DATABASE_URL")
    if external:
        url, name = _create_postgres_database(external)
        try:
            yield url
        finally:
            _drop_postgres_database(external, name)
        return
    directory.mkdir(parents=True, exist_ok=True)
    yield f"sqlite:///{directory / f'platform-{uuid.uuid4().hex[:8]}.db'}"


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


def clear_namespace(url: str, namespace: str) -> None:
    """Remove every key a test run wrote (its namespace and the per-test ones under it)."""
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"{namespace}*", count=1000):
        client.delete(key)
    client.close()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@contextmanager
def isolated_platform(
    platform_env: dict[str, str], data_dir: Path, **settings: str
) -> Iterator[RunningPlatform]:
    """The whole platform (`c3 up`) on the test PostgreSQL (or SQLite) and Redis with its own
    database and Redis namespace (so work queued by in-process tests never reaches its
    worker) and ``settings`` (C3_* variables) on top; stopped and cleaned up afterwards."""
    with fresh_database(data_dir) as url:
        env = {
            **platform_env,
            "C3_DATABASE_URL": url,
            "C3_REDIS_NAMESPACE": f"c3e{uuid.uuid4().hex[:10]}",
            **settings,
        }
        env.pop("C3_OPERATOR_TOKEN")
        running = start_platform(env, data_dir, OPERATOR_TOKEN)
        try:
            yield running
        finally:
            running.stop()
            clear_namespace(env["C3_REDIS_URL"], env["C3_REDIS_NAMESPACE"])


@pytest.fixture(scope="session")
def platform(
    platform_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPlatform]:
    """The whole platform for end-to-end tests."""
    with isolated_platform(
        platform_env,
        tmp_path_factory.mktemp("c3-platform"),
        # Billed usage vs the homeservers' own records, often enough to watch in tests.
        C3_USAGE_RECONCILE_INTERVAL_S="2",
    ) as running:
        yield running
