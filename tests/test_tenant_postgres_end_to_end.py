"""Tenants on their own PostgreSQL database, end to end: a platform started with
C3_TENANT_DATABASE_URL provisions real Synapse homeservers that keep their data in a database
and role of their own, which no other tenant's role can open; usage is read from there, and
deleting a tenant archives (pg_dump) or purges that database and drops it with its role. An
export (its pg_dump) restores, by the documented procedure, into a new database and a fresh
Synapse on a cluster where the tenant's role no longer exists."""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import nio
import psycopg
import pytest
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.engine import make_url

from platform_core.object_store import S3Store, archive_prefix
from provisioner import tenant_databases
from provisioner.backends.local import LocalBackend
from tests.helpers.environment import isolated_platform
from tests.helpers.exports import assert_serves_the_export, export_filled_tenant, restored_synapse
from tests.helpers.matrix import login
from tests.helpers.object_store import SECRET_ACCESS_KEY, S3Server
from tests.helpers.platform import RunningPlatform, poll, wait_operation

ADMIN_URL = os.environ.get("C3_TEST_DATABASE_URL", "")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not ADMIN_URL, reason="needs PostgreSQL (C3_TEST_DATABASE_URL)"),
]


@pytest.fixture(scope="module")
def pg_bucket(s3_server: S3Server) -> S3Store:
    return s3_server.bucket(prefix="pg-platform")


@pytest.fixture(scope="module")
def pg_platform(
    platform_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: S3Server,
    pg_bucket: S3Store,
) -> Iterator[RunningPlatform]:
    """`c3 up` whose tenants get their own PostgreSQL database on the test server, and whose
    exports, archives and dumps go to a bucket of a real S3 server (moto): production's
    layout on one machine."""
    try:
        with isolated_platform(
            platform_env,
            tmp_path_factory.mktemp("c3-pg-platform"),
            C3_TENANT_DATABASE_URL=ADMIN_URL,
            C3_USAGE_RECONCILE_INTERVAL_S="2",
            **s3_server.env(pg_bucket),
        ) as running:
            yield running
    finally:
        for name in tenant_database_names():  # tenants this module did not delete
            tenant_databases.drop_database(ADMIN_URL, name)


_created: list[str] = []


def create_tenant(platform: RunningPlatform, slug: str) -> dict[str, Any]:
    tenant = platform.create_tenant(slug, timeout=120)
    _created.append(tenant["id"])
    return tenant


def tenant_database_names() -> list[str]:
    return [tenant_databases.database_name_for(uuid.UUID(t)) for t in _created]


def database_of(tenant: dict[str, Any]) -> str:
    return tenant_databases.database_name_for(uuid.UUID(tenant["id"]))


def admin_query(sql: str, *params: Any, dbname: str = "postgres") -> list[tuple[Any, ...]]:
    with psycopg.connect(make_conninfo(ADMIN_URL, dbname=dbname), autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def refusal(user: str, dbname: str) -> str:
    """The error ``user`` gets connecting to ``dbname`` ('' if let in)."""
    try:
        psycopg.connect(
            make_conninfo(ADMIN_URL, user=user, dbname=dbname), connect_timeout=5
        ).close()
    except psycopg.OperationalError as exc:
        return str(exc)
    return ""


def database_gone(name: str) -> bool:
    databases = admin_query("SELECT 1 FROM pg_database WHERE datname = %s", name)
    roles = admin_query("SELECT 1 FROM pg_roles WHERE rolname = %s", name)
    return not databases and not roles


def homeserver_config(platform: RunningPlatform, tenant: dict[str, Any]) -> dict[str, Any]:
    return dict(
        yaml.safe_load((platform.homeserver_dir(tenant["id"]) / "homeserver.yaml").read_text())
    )


async def send_message(platform: RunningPlatform, tenant: dict[str, Any], body: str) -> str:
    user = platform.create_user(tenant["id"], "pia", "pia-secret-123")
    client = await login(f"{platform.proxy_url}/t/{tenant['slug']}", user, "pia-secret-123")
    try:
        room = await client.room_create(name="ledger")
        assert isinstance(room, nio.RoomCreateResponse), room
        sent = await client.room_send(
            room.room_id, "m.room.message", {"msgtype": "m.text", "body": body}
        )
        assert isinstance(sent, nio.RoomSendResponse), sent
        return str(sent.event_id)
    finally:
        await client.close()


async def test_each_homeserver_keeps_its_data_in_a_database_only_it_can_open(
    pg_platform: RunningPlatform,
) -> None:
    alpha = create_tenant(pg_platform, "pg-alpha")
    beta = create_tenant(pg_platform, "pg-beta")
    db_alpha, db_beta = database_of(alpha), database_of(beta)
    database = homeserver_config(pg_platform, alpha)["database"]
    assert database["name"] == "psycopg2"
    assert (database["args"]["dbname"], database["args"]["user"]) == (db_alpha, db_alpha)
    assert not (pg_platform.homeserver_dir(alpha["id"]) / "homeserver.db").exists()

    event_id = await send_message(pg_platform, alpha, "stored in alpha's own database")
    stored = admin_query("SELECT type FROM events WHERE event_id = %s", event_id, dbname=db_alpha)
    assert stored == [("m.room.message",)]
    assert admin_query("SELECT 1 FROM events WHERE event_id = %s", event_id, dbname=db_beta) == []

    # Tenant roles open their own database, never another tenant's or the platform's.
    platform_db = make_url(pg_platform.env["C3_DATABASE_URL"]).database
    assert refusal(db_alpha, db_alpha) == ""
    assert "permission denied for database" in refusal(db_alpha, db_beta)
    assert "permission denied for database" in refusal(db_beta, db_alpha)
    assert "permission denied for database" in refusal(db_alpha, str(platform_db))

    # Usage comes from the tenant's database, and the reconciliation agrees with billing.
    assert LocalBackend(pg_platform.data_dir).usage_counts(alpha["id"]) == {
        "messages": 1,
        "media_bytes": 0,
    }

    def reconciled() -> dict[str, Any] | None:
        with pg_platform.api() as api:
            items = api.get(f"/v1/tenants/{alpha['id']}/usage/reconciliation").json()["items"]
        checks = {item["meter"]: item for item in reversed(items)}  # newest wins
        check = checks.get("messages")
        return check if check and check["homeserver"] == check["billed"] == 1 else None

    assert (
        poll(reconciled, timeout=60, what="a reconciliation that read alpha's database")["drift"]
        == 0
    )

    # The role's password lives in the homeserver's config (0600), never in a log.
    password = database["args"]["password"]
    logs = [pg_platform.log_path, *(pg_platform.data_dir / "logs").glob("*.log")]
    logs += (pg_platform.data_dir / "homeservers").glob("*/*.log")
    assert [p.name for p in logs if password in p.read_text(errors="replace")] == []


def test_deleting_a_tenant_archives_its_database_and_purging_leaves_nothing(
    pg_platform: RunningPlatform, pg_bucket: S3Store, tmp_path: Path
) -> None:
    """The data archive and the database dump land in the bucket (nothing stays on the
    worker's disk); ?purge=true leaves nothing there."""
    kept = create_tenant(pg_platform, "pg-kept")
    purged = create_tenant(pg_platform, "pg-purged")
    pg_platform.create_user(kept["id"], "kim", "kim-secret-123")

    with pg_platform.api() as api:
        deleted = api.delete(f"/v1/tenants/{kept['id']}")
        assert deleted.status_code == 202, deleted.text
        purging = api.delete(f"/v1/tenants/{purged['id']}", params={"purge": "true"})
        assert purging.status_code == 202, purging.text
    steps = wait_operation(pg_platform, deleted.json()["operation"]["url"], 120)["steps_done"]
    [archived] = [s.split(":", 1)[1] for s in steps if s.startswith("database-archived:")]
    assert "database-dropped" in steps
    assert archived.startswith(f"archive/{kept['id']}-") and archived.endswith(".pgdump")
    stored = [item.key for item in pg_bucket.list(archive_prefix(kept["id"]))]
    assert archived in stored
    assert [k for k in stored if k.endswith(".tar.gz")] == [
        s.split(":", 1)[1] for s in steps if s.startswith("data-archived:")
    ]
    assert not (pg_platform.data_dir / "archive").exists()  # nothing on the worker's disk
    assert not pg_platform.homeserver_dir(kept["id"]).exists()
    dump = tmp_path / "kept.pgdump"
    dump.write_bytes(pg_bucket.read_bytes(archived))
    listing = subprocess.run(
        ["pg_restore", "--list", str(dump)], capture_output=True, text=True, check=True
    ).stdout
    assert "TABLE DATA public events" in listing and "TABLE DATA public users" in listing
    assert database_gone(database_of(kept))

    steps = wait_operation(pg_platform, purging.json()["operation"]["url"], 120)["steps_done"]
    assert "database-dropped" in steps and "data-purged" in steps
    assert not any(s.startswith("database-archived") for s in steps)
    assert pg_bucket.list(archive_prefix(purged["id"])) == []
    assert database_gone(database_of(purged))


def admin_execute(statement: sql.Composed) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


def run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{command[0]} failed: {done.stderr}"


@contextmanager
def restored_database(dump: Path) -> Iterator[dict[str, Any]]:
    """The restore procedure of provisioner.exports, step by step: a new role, a new database
    it owns (UTF8, C collation, from template0), and ``pg_restore`` of the archive's dump as
    that role, leaving out the tenant role's ownership and grants. Yields Synapse's psycopg2
    section for it; drops the database and the role on the way out, also on failure."""
    name = f"c3_restore_{uuid.uuid4().hex[:12]}"
    password = secrets.token_urlsafe(24)
    role = sql.Identifier(name)
    admin_execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, password))
    try:
        run(
            [
                "createdb",
                f"--maintenance-db={ADMIN_URL}",
                f"--owner={name}",
                "--encoding=UTF8",
                "--lc-collate=C",
                "--lc-ctype=C",
                "--template=template0",
                name,
            ]
        )
        run(
            [
                "pg_restore",
                f"--dbname={make_conninfo(ADMIN_URL, dbname=name)}",
                f"--role={name}",
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--single-transaction",
                str(dump),
            ]
        )
        server = {
            key: value
            for key, value in conninfo_to_dict(ADMIN_URL).items()
            if key not in ("user", "password", "dbname")
        }
        args = {**server, "user": name, "password": password, "dbname": name}
        yield {"name": "psycopg2", "args": {**args, "cp_min": 1, "cp_max": 5}}
    finally:
        admin_execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(role))
        admin_execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))


def test_an_export_restores_into_a_new_database_and_a_fresh_synapse(
    pg_platform: RunningPlatform, pg_bucket: S3Store, tmp_path: Path
) -> None:
    tenant = create_tenant(pg_platform, "pg-export")
    exported = export_filled_tenant(pg_platform, tenant, tmp_path, bucket=pg_bucket)
    assert exported.manifest["database"] == {
        "engine": "postgresql",
        "path": "database/homeserver.pgdump",
    }
    # The archive's config names the tenant's database but not its role's password.
    config = yaml.safe_load((exported.unpacked / "homeserver.yaml").read_text())
    assert config["database"]["args"]["password"] == "<redacted>"

    # Leave the platform: the tenant, its database and its role are gone before the restore,
    # as on another cluster, so nothing of theirs can be what the restored Synapse serves.
    with pg_platform.api() as api:
        deleted = api.delete(f"/v1/tenants/{tenant['id']}", params={"purge": "true"})
        assert deleted.status_code == 202, deleted.text
    wait_operation(pg_platform, deleted.json()["operation"]["url"], 120)
    assert database_gone(database_of(tenant))

    dump = exported.unpacked / "database" / "homeserver.pgdump"
    with (
        restored_database(dump) as database,
        restored_synapse(
            exported.unpacked, tenant["server_name"], tmp_path / "restored", database
        ) as restored,
    ):
        assert_serves_the_export(restored, exported)


def test_the_object_store_secret_is_in_no_log_and_no_answer(
    pg_platform: RunningPlatform, pg_bucket: S3Store
) -> None:
    """After the exports and deletions above went through the bucket: the S3 secret access key
    appears in no log the platform or its homeservers wrote, and in no API answer."""
    logs = [pg_platform.log_path, *(pg_platform.data_dir / "logs").glob("*.log")]
    logs += (pg_platform.data_dir / "homeservers").glob("*/*.log")
    assert [p.name for p in logs if SECRET_ACCESS_KEY in p.read_text(errors="replace")] == []
    tenant = create_tenant(pg_platform, "pg-secret")
    with pg_platform.api() as api:
        accepted = api.post(f"/v1/tenants/{tenant['id']}/export")
        wait_operation(pg_platform, accepted.headers["location"], timeout=120)
        answers = [
            accepted,
            api.get(f"/v1/tenants/{tenant['id']}/exports"),
            api.get(accepted.headers["location"]),
        ]
    link = answers[1].json()["items"][0]["download_url"]
    answers.append(httpx.get(link, timeout=30))  # the redirect to the presigned URL
    for answer in answers:
        assert SECRET_ACCESS_KEY not in answer.text
        assert SECRET_ACCESS_KEY not in str(answer.headers)
