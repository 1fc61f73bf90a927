"""The test environment: the operator token, fresh platform databases, Redis namespaces, and the
whole platform isolated on its own database and namespace."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.helpers.platform import RunningPlatform, start_platform

OPERATOR_TOKEN = "c3op_test_" + secrets.token_urlsafe(16)


def create_postgres_database(base_url: str) -> tuple[str, str]:
    """A new, empty database on the PostgreSQL server of ``base_url``: its URL and name."""
    url = make_url(base_url).set(drivername="postgresql+psycopg")
    name = f"c3_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False), name


def drop_postgres_database(base_url: str, name: str) -> None:
    url = make_url(base_url).set(drivername="postgresql+psycopg")
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@contextmanager
def fresh_database(directory: Path) -> Iterator[str]:
    """A new, empty platform database on the test PostgreSQL (or a SQLite file)."""
    external = os.environ.get("C3_TEST_DATABASE_URL")
    if external:
        url, name = create_postgres_database(external)
        try:
            yield url
        finally:
            drop_postgres_database(external, name)
        return
    directory.mkdir(parents=True, exist_ok=True)
    yield f"sqlite:///{directory / f'platform-{uuid.uuid4().hex[:8]}.db'}"


def clear_namespace(url: str, namespace: str) -> None:
    """Remove every key a test run wrote (its namespace and the per-test ones under it)."""
    delete_keys(url, f"{namespace}*")


def delete_keys(url: str, pattern: str) -> None:
    """Remove every key matching ``pattern`` (Redis ``SCAN MATCH``)."""
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=pattern, count=1000):
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


def platform_fixture(
    directory: str, doc: str, *, scope: Literal["session", "module"] = "module", **settings: str
) -> Any:
    """A fixture giving its tests a platform of their own (``isolated_platform`` in a temporary
    ``directory``) with ``settings`` on top; assign it to the fixture's name::

        json_platform = platform_fixture("c3-json-logs", "…", C3_LOG_FORMAT="json")
    """

    def running_platform(
        platform_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[RunningPlatform]:
        data_dir = tmp_path_factory.mktemp(directory)
        with isolated_platform(platform_env, data_dir, **settings) as running:
            yield running

    running_platform.__doc__ = doc
    return pytest.fixture(scope=scope)(running_platform)
