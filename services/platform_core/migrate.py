"""Run and check the platform database's migrations (Alembic, one history)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from platform_core.db import make_sync_engine
from platform_core.settings import get_settings

# An installed wheel carries alembic.ini and migrations/ in platform_core/_alembic/; a source
# checkout has them at the repository root.
_ROOT_CANDIDATES = (
    Path(__file__).resolve().parent / "_alembic",
    Path(__file__).resolve().parents[2],
    Path.cwd(),
)


class DatabaseNotMigrated(RuntimeError):
    pass


def alembic_config(database_url: str | None = None) -> Config:
    for root in _ROOT_CANDIDATES:
        ini = root / "alembic.ini"
        if ini.exists():
            cfg = Config(str(ini))
            cfg.attributes["database_url"] = database_url or get_settings().effective_database_url
            return cfg
    raise RuntimeError("alembic.ini not found next to the C3 sources")


def upgrade(database_url: str | None = None) -> None:
    command.upgrade(alembic_config(database_url), "head")


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def assert_migrated(database_url: str | None = None) -> None:
    """Refuse to run against a database that is not at the head revision."""
    url = database_url or get_settings().effective_database_url
    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            current = current_revision(conn)
    finally:
        engine.dispose()
    head = head_revision()
    if current != head:
        raise DatabaseNotMigrated(
            f"the platform database is at revision {current or 'none (empty)'} but this code "
            f"needs {head}: run `c3 migrate` first"
        )
