"""Per-tenant PostgreSQL databases on the real test server: created as Synapse needs them,
isolated from each other and from the platform's database, dumped and dropped idempotently.

The test server trusts loopback logins (no password check), but CONNECT privileges are
checked all the same, so a refused connection here is a refused connection in production.
"""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

from platform_core.errors import PermanentError
from platform_core.object_store import LocalStore, ObjectStore
from platform_core.settings import Settings
from provisioner import tenant_databases
from provisioner.synapse_config import HomeserverSecrets

ADMIN_URL = os.environ.get("C3_TEST_DATABASE_URL", "")
pytestmark = pytest.mark.skipif(not ADMIN_URL, reason="needs PostgreSQL (C3_TEST_DATABASE_URL)")


def connect(url: str = ADMIN_URL, **override: str) -> psycopg.Connection[Any]:
    return psycopg.connect(make_conninfo(url, **override), autocommit=True)


def url_as(user: str, dbname: str = "postgres") -> str:
    return make_conninfo(ADMIN_URL, user=user, dbname=dbname)


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Fresh tenant database names; whatever a test leaves behind is dropped afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        tenant_databases.drop_database(ADMIN_URL, name)


def new_name(names: list[str]) -> str:
    name = tenant_databases.database_name_for(uuid.uuid4())
    names.append(name)
    return name


def snapshot(name: str) -> tuple[Any, ...]:
    """Everything ``ensure_database`` could change about a tenant's role and database."""
    with connect() as conn:
        row = conn.execute(
            "SELECT d.oid, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding),"
            " d.datcollate, d.datctype, d.datacl::text, a.oid, a.rolcanlogin, a.rolsuper,"
            " a.rolcreatedb, a.rolcreaterole, a.rolreplication, a.rolconnlimit, a.rolpassword"
            " FROM pg_database d JOIN pg_authid a ON a.rolname = d.datname WHERE d.datname = %s",
            (name,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def platform_url(user: str, dbname: str) -> str:
    """A platform database URL as C3_DATABASE_URL spells it (SQLAlchemy)."""
    url = make_url(ADMIN_URL).set(drivername="postgresql+psycopg", username=user, database=dbname)
    return url.render_as_string(hide_password=False)


def refusal(url: str) -> str:
    """The error a connection attempt gets ('' if it is let in)."""
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        return str(exc)
    return ""


def test_a_tenant_database_is_what_synapse_needs_and_ensuring_it_again_changes_nothing(
    names: list[str],
) -> None:
    name = new_name(names)
    tenant_databases.ensure_database(ADMIN_URL, name, "pw-one")
    first = snapshot(name)
    owner, encoding, collate, ctype = first[1:5]
    assert (owner, encoding, collate, ctype) == (name, "UTF8", "C", "C")
    # The server's template1 is C.UTF-8: a C database can only have come from template0.
    login, superuser, createdb, createrole, replication, limit = first[7:13]
    assert (login, superuser, createdb, createrole, replication) == (
        True,
        False,
        False,
        False,
        False,
    )
    assert limit == tenant_databases.CONNECTION_LIMIT
    assert str(first[13]).startswith("SCRAM-SHA-256$")  # a verifier, not the password

    tenant_databases.ensure_database(ADMIN_URL, name, "pw-two")
    assert snapshot(name) == first  # same database, role, privileges and password


def test_a_tenant_role_reaches_only_its_own_database(names: list[str]) -> None:
    a, b = new_name(names), new_name(names)
    for name in (a, b):
        tenant_databases.ensure_database(ADMIN_URL, name, f"{name}-pw")

    assert refusal(url_as(a, a)) == ""
    assert "permission denied for database" in refusal(url_as(a, b))
    assert "permission denied for database" in refusal(url_as(b, a))


def test_the_platform_database_is_closed_to_tenant_roles_when_the_platform_owns_it(
    names: list[str],
) -> None:
    tenant = new_name(names)
    tenant_databases.ensure_database(ADMIN_URL, tenant, "pw")
    suffix = uuid.uuid4().hex[:10]
    owner, other, app = f"c3_test_plat_{suffix}", f"c3_test_other_{suffix}", f"c3_test_app_{suffix}"
    with connect() as conn:
        for role in (owner, app):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        for database in (owner, other):
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(owner)
                )
            )
        maintenance_acl = conn.execute(
            "SELECT datacl::text FROM pg_database WHERE datname = 'postgres'"
        ).fetchone()
    try:
        assert refusal(url_as(tenant, owner)) == ""  # PostgreSQL's default: PUBLIC may connect
        assert tenant_databases.protect_platform_database(platform_url(owner, owner)) is True
        assert "permission denied for database" in refusal(url_as(tenant, owner))
        assert refusal(url_as(owner, owner)) == ""  # the platform itself still connects
        assert tenant_databases.protect_platform_database(platform_url(owner, owner)) is False

        # A platform role that connects through PUBLIC's grant is not locked out.
        assert tenant_databases.protect_platform_database(platform_url(app, other)) is False
        assert refusal(url_as(app, other)) == ""
        # Nor are other tools out of the cluster's maintenance database.
        assert tenant_databases.protect_platform_database(ADMIN_URL) is False
    finally:
        with connect() as conn:
            acl = conn.execute(
                "SELECT datacl::text FROM pg_database WHERE datname = 'postgres'"
            ).fetchone()
            if acl != maintenance_acl:  # give the shared server back as it was
                conn.execute("GRANT CONNECT, TEMPORARY ON DATABASE postgres TO PUBLIC")
            for database in (owner, other):
                conn.execute(
                    sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database))
                )
            for role in (owner, app):
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert acl == maintenance_acl


def test_a_dump_restores_and_dropping_is_idempotent(names: list[str], tmp_path: Path) -> None:
    name = new_name(names)
    tenant_databases.ensure_database(ADMIN_URL, name, "pw")
    with connect(url_as(name, name)) as conn:  # as Synapse would: the tenant's own role
        conn.execute("CREATE TABLE events (event_id text PRIMARY KEY)")
        conn.execute("INSERT INTO events VALUES ('$one')")

    dest = tmp_path / "archive" / "t.pgdump"
    tenant_databases.dump_database(ADMIN_URL, name, dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert [p.name for p in dest.parent.iterdir()] == ["t.pgdump"]  # no partial file left
    listing = subprocess.run(
        ["pg_restore", "--list", str(dest)], capture_output=True, text=True, check=True
    ).stdout
    assert "TABLE DATA public events" in listing

    tenant_databases.drop_database(ADMIN_URL, name)
    tenant_databases.drop_database(ADMIN_URL, name)  # nothing left to drop: no error
    with connect() as conn:
        assert (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None
        )
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_retiring_keeps_one_dump_or_none_and_survives_redelivery(
    names: list[str], tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """The dump goes to the object store (the data directory, or S3 on moto's server) beside
    the tenant's archives, built in a private work directory that is empty afterwards."""
    settings = Settings(tenant_database_url=ADMIN_URL, data_dir=tmp_path)
    store: ObjectStore = (
        LocalStore(tmp_path) if kind == "local" else request.getfixturevalue("s3_server").bucket()
    )
    kept, purged = new_name(names), new_name(names)
    for name in (kept, purged):
        tenant_databases.ensure_database(ADMIN_URL, name, "pw")

    dump = tenant_databases.retire(settings, kept, "tenant-k", store, keep=True)
    assert dump is not None and dump.startswith("archive/tenant-k-") and dump.endswith(".pgdump")
    assert store.read_bytes(dump).startswith(b"PGDMP")  # pg_dump's custom format
    again = tenant_databases.retire(settings, kept, "tenant-k", store, keep=True)
    assert again == dump and [item.key for item in store.list("archive/")] == [dump]

    assert tenant_databases.retire(settings, purged, "tenant-p", store, keep=False) is None
    assert [item.key for item in store.list("archive/")] == [dump]
    assert list((tmp_path / "work").iterdir()) == []  # no local copy left
    with connect() as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", ([kept, purged],)
        ).fetchall()
    assert left == []


def test_a_platform_role_that_is_not_superuser_can_run_the_whole_lifecycle(
    names: list[str], tmp_path: Path
) -> None:
    admin = f"c3_test_admin_{uuid.uuid4().hex[:10]}"
    with connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE CREATEDB").format(sql.Identifier(admin))
        )
    admin_url = url_as(admin)
    name = new_name(names)
    try:
        tenant_databases.ensure_database(admin_url, name, "pw")
        tenant_databases.ensure_database(admin_url, name, "pw")
        with connect(url_as(name, name)) as conn:
            conn.execute("CREATE TABLE rooms (room_id text)")
        tenant_databases.dump_database(admin_url, name, tmp_path / "n.pgdump")
        tenant_databases.drop_database(admin_url, name)
        assert not tenant_databases.database_exists(admin_url, name)
    finally:
        tenant_databases.drop_database(ADMIN_URL, name)
        with connect() as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(admin)))


def test_synapse_connects_as_the_tenant_role_on_the_platforms_server() -> None:
    tenant_id = uuid.uuid4()
    name = tenant_databases.database_name_for(tenant_id)
    secrets = HomeserverSecrets.generate()
    settings = Settings(
        tenant_database_url="postgresql://c3admin:admin-pw@db.internal:6543/postgres?sslmode=require"
    )
    section = tenant_databases.synapse_database(settings, name, secrets)
    assert section is not None and section["name"] == "psycopg2"
    args = section["args"]
    assert (args["host"], args["port"], args["sslmode"]) == ("db.internal", "6543", "require")
    assert (args["user"], args["dbname"], args["password"]) == (
        name,
        name,
        secrets.database_password,
    )
    assert "admin-pw" not in str(section)
    assert tenant_databases.synapse_database(settings, None, secrets) is None  # SQLite
    with pytest.raises(PermanentError, match="C3_TENANT_DATABASE_URL"):
        tenant_databases.synapse_database(Settings(tenant_database_url=None), name, secrets)


def test_only_tenant_databases_are_ever_dumped_or_dropped(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="not a tenant database"):
        tenant_databases.drop_database(ADMIN_URL, "postgres")
    with pytest.raises(PermanentError, match="not a tenant database"):
        tenant_databases.dump_database(ADMIN_URL, "postgres", tmp_path / "x.pgdump")
    assert refusal(ADMIN_URL) == ""  # still there
