"""One migration history that builds the schema on SQLite and PostgreSQL, and a platform that
refuses to run on a database that is not migrated."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from platform_core.db import make_sync_engine
from platform_core.migrate import DatabaseNotMigrated, assert_migrated, upgrade
from platform_core.models import Plan
from tests.conftest import fresh_database


def test_an_empty_database_is_refused_with_a_clear_message(
    platform_env: dict[str, str], tmp_path: Path
) -> None:
    with fresh_database(tmp_path) as url:
        with pytest.raises(DatabaseNotMigrated, match="c3 migrate"):
            assert_migrated(url)


def test_migrating_builds_the_schema_and_the_default_plan(
    platform_env: dict[str, str], tmp_path: Path
) -> None:
    with fresh_database(tmp_path) as url:
        upgrade(url)
        upgrade(url)  # a second run is a no-op
        assert_migrated(url)
        engine = make_sync_engine(url)
        with engine.connect() as conn:
            plans = conn.execute(select(Plan.code, Plan.is_default, Plan.base_fee_minor)).all()
        engine.dispose()
        assert plans == [("standard", True, 0)]
