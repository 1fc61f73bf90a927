"""Database engines and sessions: async for the API, sync for Celery tasks and migrations.

One URL (``C3_DATABASE_URL``) is mapped to the right driver for each: psycopg 3 serves both
sync and async PostgreSQL; SQLite uses sqlite3 / aiosqlite with WAL and a busy timeout so the
API and the worker can write the same local file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from platform_core.settings import get_settings


def driver_url(url: str, *, asynchronous: bool) -> str:
    """Return ``url`` with the driver C3 uses for it (psycopg, sqlite3 or aiosqlite)."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "postgresql":
        return u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if backend == "sqlite":
        drivername = "sqlite+aiosqlite" if asynchronous else "sqlite"
        return u.set(drivername=drivername).render_as_string(hide_password=False)
    raise ValueError(f"unsupported database {backend!r}: use postgresql:// or sqlite:///")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_sync_engine(url: str) -> Engine:
    if is_sqlite(url):
        engine = create_engine(driver_url(url, asynchronous=False))
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(driver_url(url, asynchronous=False), pool_pre_ping=True)


def make_async_engine(url: str) -> AsyncEngine:
    if is_sqlite(url):
        engine = create_async_engine(driver_url(url, asynchronous=True))
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        driver_url(url, asynchronous=True), pool_pre_ping=True, pool_size=10, max_overflow=10
    )


@lru_cache(maxsize=1)
def sync_engine() -> Engine:
    return make_sync_engine(get_settings().effective_database_url)


@lru_cache(maxsize=1)
def async_engine() -> AsyncEngine:
    return make_async_engine(get_settings().effective_database_url)


@lru_cache(maxsize=1)
def _sync_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(sync_engine(), expire_on_commit=False)


@lru_cache(maxsize=1)
def async_sessionmaker_() -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(async_engine(), expire_on_commit=False)


@contextmanager
def task_session() -> Iterator[Session]:
    """A session for one task step: commits on success, rolls back on error."""
    session = _sync_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@asynccontextmanager
async def request_session() -> AsyncIterator[AsyncSession]:
    """A session for one request: commits on success, rolls back on error."""
    session = async_sessionmaker_()()
    try:
        yield session
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    finally:
        await session.close()
