"""Tenant export archives (real files, real SQLite, the test database and Redis): what the
archive holds, a consistent database copy while it is being written, idempotent operation
bodies, expiry, and the signed download links."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import stat
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from sqlalchemy import select

from platform_core.crypto import SecretBox
from platform_core.db import task_session
from platform_core.errors import NotFound, Superseded
from platform_core.models import (
    ExportState,
    Homeserver,
    HomeserverDesiredState,
    Operation,
    OperationKind,
    OperationState,
    Tenant,
    TenantExport,
    TenantStatus,
    utcnow,
)
from platform_core.object_store import LocalStore, export_key
from platform_core.settings import get_settings
from provisioner import exports, steps
from provisioner.backends.local import LocalBackend
from provisioner.lease import Lease
from provisioner.operations import export as export_operation
from provisioner.synapse_config import HomeserverSecrets, HomeserverSpec, write_homeserver_files
from tenant_api import access_log
from tenant_api.exports import links, service
from tests.helpers.factories import make_tenant
from tests.helpers.object_store import S3Server
from tests.helpers.platform import poll

MEDIA = {"local_content/ab/cd/efgh": b"\x89PNG fake image", "local_thumbnails/ab/cd/x/32": b"t"}


def fake_homeserver(data_dir: Path, secrets: HomeserverSecrets, *, extra: str = "") -> None:
    """A homeserver directory as the local backend leaves it: rendered config and signing
    key, a SQLite database in WAL mode (as Synapse runs it) and media files."""
    spec = HomeserverSpec(
        server_name="acme.c3.test",
        public_baseurl="http://acme.c3.test/",
        port=8448,
        bind_address="127.0.0.1",
        data_dir=data_dir,
        limits={},
    )
    write_homeserver_files(spec, secrets)
    if extra:
        config = yaml.safe_load((data_dir / "homeserver.yaml").read_text())
        config.update(yaml.safe_load(extra))
        (data_dir / "homeserver.yaml").write_text(yaml.safe_dump(config))
    with sqlite3.connect(data_dir / "homeserver.db") as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT)")
        db.execute("INSERT INTO events (body) VALUES ('hello'), ('world')")
    for name, data in MEDIA.items():
        path = data_dir / "media_store" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def source_for(data_dir: Path, secrets: HomeserverSecrets, **extra: object) -> exports.ExportSource:
    known = {k: v for k, v in secrets.to_dict().items() if k != "signing_key"}
    return exports.ExportSource(
        export_id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        server_name="acme.c3.test",
        data_dir=data_dir,
        secrets=frozenset(known.values()) | frozenset(str(v) for v in extra.values()),
    )


def test_the_archive_holds_database_media_signing_key_redacted_config_and_manifest(
    tmp_path: Path,
) -> None:
    secrets = HomeserverSecrets.generate()
    turn = "turn-shared-" + uuid.uuid4().hex
    fake_homeserver(
        tmp_path / "hs",
        secrets,
        extra=f"turn_shared_secret: {turn}\nturn_uris: ['turn:turn.example.com']\n"
        "oidc_providers: [{idp_id: corp, client_id: c3, client_secret: '" + turn + "x'}]\n",
    )
    archive = tmp_path / "out" / "export.tar.gz"
    exports.build_archive(
        source_for(tmp_path / "hs", secrets, turn=turn),
        archive,
        admin_url=None,
        synapse_version="1.2.3",
    )

    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert not (tmp_path / "out" / "export.tar.gz.partial").exists()
    assert list((tmp_path / "out").glob(".work-*")) == []  # the database copy is cleaned up
    files = members(archive)
    assert set(files) == {
        "database/homeserver.db",
        "homeserver.yaml",
        "signing.key",
        "manifest.json",
        *(f"media_store/{name}" for name in MEDIA),
    }
    for name, data in MEDIA.items():
        assert files[f"media_store/{name}"] == data
    assert files["signing.key"].decode().strip() == secrets.signing_key

    manifest = json.loads(files["manifest.json"])
    assert manifest["format"] == "c3-tenant-export" and manifest["format_version"] == 1
    assert manifest["server_name"] == "acme.c3.test" and manifest["synapse_version"] == "1.2.3"
    assert manifest["created_at"].endswith("+00:00")
    assert manifest["database"] == {"engine": "sqlite3", "path": "database/homeserver.db"}
    assert set(manifest["files"]) == set(files) - {"manifest.json"}
    for name, entry in manifest["files"].items():
        assert entry == {
            "sha256": hashlib.sha256(files[name]).hexdigest(),
            "size": len(files[name]),
        }

    config = yaml.safe_load(files["homeserver.yaml"])
    assert config["server_name"] == "acme.c3.test"
    for key in ("registration_shared_secret", "macaroon_secret_key", "form_secret"):
        assert key not in config
    assert config["turn_shared_secret"] == exports.REDACTED
    assert config["oidc_providers"][0]["client_secret"] == exports.REDACTED
    assert config["turn_uris"] == ["turn:turn.example.com"]
    redactions = manifest["config_redactions"]
    assert sorted(redactions["removed"]) == [
        "form_secret",
        "macaroon_secret_key",
        "registration_shared_secret",
    ]
    assert set(redactions["replaced"]) == {"turn_shared_secret", "oidc_providers[0].client_secret"}
    everything = b"".join(files.values())
    for secret in (secrets.registration_shared_secret, secrets.macaroon_secret_key, turn):
        assert secret.encode() not in everything

    restored = tmp_path / "restored.db"
    restored.write_bytes(files["database/homeserver.db"])
    with sqlite3.connect(restored) as db:
        assert db.execute("SELECT body FROM events ORDER BY id").fetchall() == [
            ("hello",),
            ("world",),
        ]
    assert not Path(f"{restored}-wal").exists()  # self-contained: no WAL to carry


def test_an_export_that_fails_midway_leaves_nothing_behind(tmp_path: Path) -> None:
    secrets = HomeserverSecrets.generate()
    fake_homeserver(tmp_path / "hs", secrets)
    (tmp_path / "hs" / "signing.key").unlink()  # fails after the archive was begun
    with pytest.raises(FileNotFoundError):
        exports.build_archive(
            source_for(tmp_path / "hs", secrets),
            tmp_path / "out" / "export.tar.gz",
            admin_url=None,
            synapse_version="1",
        )
    assert list((tmp_path / "out").iterdir()) == []


def test_the_online_backup_is_consistent_while_the_database_is_written(tmp_path: Path) -> None:
    """A writer commits (event, stream position) pairs in one transaction each, as Synapse
    does, while the backup runs: the copy is intact and never holds half a transaction."""
    database = tmp_path / "homeserver.db"
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, body BLOB)")
        db.execute("CREATE TABLE stream (position INTEGER)")
        db.execute("INSERT INTO stream VALUES (0)")
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        conn = sqlite3.connect(database, timeout=30)
        while not stop.is_set():
            with conn:
                cursor = conn.execute("INSERT INTO events (body) VALUES (?)", (os.urandom(512),))
                conn.execute("UPDATE stream SET position = ?", (cursor.lastrowid,))
            written[0] += 1
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        poll(lambda: written[0] >= 2000, timeout=30, what="the writer to fill the database")
        before = written[0]
        exports.backup_sqlite(database, tmp_path / "copy.db")
        poll(lambda: written[0] > before + 50, timeout=30, what="writes after the backup")
    finally:
        stop.set()
        thread.join()
    assert written[0] > before  # the writer was never blocked by the backup
    with sqlite3.connect(tmp_path / "copy.db") as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (events,) = copy.execute("SELECT count(*) FROM events").fetchone()
        (top,) = copy.execute("SELECT max(id) FROM events").fetchone()
        (position,) = copy.execute("SELECT position FROM stream").fetchone()
    assert events >= before and position == top == events


@pytest.mark.skipif(
    not os.environ.get("C3_TEST_DATABASE_URL"), reason="needs the test PostgreSQL server"
)
def test_a_postgres_tenant_is_exported_with_pg_dump(tmp_path: Path) -> None:
    from provisioner import tenant_databases

    admin_url = os.environ["C3_TEST_DATABASE_URL"]
    name = tenant_databases.database_name_for(uuid.uuid4())
    secrets = HomeserverSecrets.generate()
    tenant_databases.ensure_database(admin_url, name, secrets.database_password)
    try:
        with psycopg.connect(admin_url, dbname=name, autocommit=True) as conn:
            conn.execute("SET ROLE " + name)  # as Synapse creates its tables
            conn.execute("CREATE TABLE events (body text)")
            conn.execute("INSERT INTO events VALUES ('kept in postgres')")
            fill_credentials(conn.execute, "%s")
        fake_homeserver(tmp_path / "hs", secrets)
        (tmp_path / "hs" / "homeserver.db").unlink()
        source = source_for(tmp_path / "hs", secrets)
        source = exports.ExportSource(
            **{**source.__dict__, "database_name": name, "platform_users": frozenset({ADMIN})}
        )
        archive = tmp_path / "export.tar.gz"
        exports.build_archive(source, archive, admin_url=admin_url, synapse_version="1")
        files = members(archive)
        manifest = json.loads(files["manifest.json"])
        assert manifest["database"]["engine"] == "postgresql"
        (tmp_path / "dump").write_bytes(files["database/homeserver.pgdump"])
        restored = subprocess.run(
            ["pg_restore", "--file=-", str(tmp_path / "dump")],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "kept in postgres" in restored.stdout
        assert EVE_TOKEN in restored.stdout and ADMIN_TOKEN not in restored.stdout
        assert manifest["scrubbed"] == {"platform_users": [ADMIN], "tables": SCRUBBED_TABLES}
        # The scratch copy is gone, and the live database still has the admin's session.
        scratch = tenant_databases.scratch_name_for(source.export_id)
        with psycopg.connect(admin_url) as conn:
            left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (scratch,))
            assert left.fetchall() == []
        with psycopg.connect(admin_url, dbname=name) as conn:
            live = conn.execute("SELECT token FROM access_tokens WHERE user_id = %s", (ADMIN,))
            assert live.fetchall() == [(ADMIN_TOKEN,)]
    finally:
        tenant_databases.drop_database(admin_url, name)


ADMIN = "@c3-admin:acme.c3.test"
EVE = "@eve:acme.c3.test"
ADMIN_TOKEN = "syt_YzMtYWRtaW4_" + "A" * 20  # as Synapse mints them
EVE_TOKEN = "syt_ZXZl_" + "B" * 20
# The credential tables of Synapse's schema (the parts the scrub touches), with one row of the
# platform admin and one of a tenant user in each.
CREDENTIAL_SCHEMA = [
    "CREATE TABLE users (name TEXT, password_hash TEXT)",
    "CREATE TABLE access_tokens (user_id TEXT, device_id TEXT, token TEXT)",
    "CREATE TABLE devices (user_id TEXT, device_id TEXT)",
    "CREATE TABLE e2e_device_keys_json (user_id TEXT, device_id TEXT, key_json TEXT)",
    "CREATE TABLE user_ips (user_id TEXT, access_token TEXT, ip TEXT)",
    "CREATE TABLE user_signature_stream (from_user_id TEXT, user_ids TEXT)",
]


def credential_rows(user: str, token: str) -> list[tuple[str, tuple[str, ...]]]:
    return [
        ("users", (user, f"$2b$12$hash-of-{user}")),
        ("access_tokens", (user, "DEV", token)),
        ("devices", (user, "DEV")),
        ("e2e_device_keys_json", (user, "DEV", "{}")),
        ("user_ips", (user, token, "127.0.0.1")),
        ("user_signature_stream", (user, "[]")),
    ]


def fill_credentials(execute: Callable[..., object], mark: str) -> None:
    """Synapse's credential tables with rows of the platform admin and of a tenant user
    (``mark``: the driver's parameter marker)."""
    for statement in CREDENTIAL_SCHEMA:
        execute(statement)
    for user, token in ((ADMIN, ADMIN_TOKEN), (EVE, EVE_TOKEN)):
        for table, values in credential_rows(user, token):
            execute(f"INSERT INTO {table} VALUES ({', '.join(mark for _ in values)})", values)


SCRUBBED_TABLES = [
    "access_tokens",
    "user_ips",
    "devices",
    "e2e_device_keys_json",
    "user_signature_stream",
    "users.password_hash",
]


def assert_only_the_tenant_users_credentials_are_left(query: Callable[[str], Any]) -> None:
    def rows(sql: str) -> list[tuple[object, ...]]:
        return [tuple(r) for r in query(sql)]

    for table in ("access_tokens", "devices", "e2e_device_keys_json", "user_ips"):
        assert rows(f"SELECT user_id FROM {table}") == [(EVE,)], table
    assert rows("SELECT token FROM access_tokens") == [(EVE_TOKEN,)]
    assert rows("SELECT from_user_id FROM user_signature_stream") == [(EVE,)]
    assert sorted(rows("SELECT name, password_hash FROM users")) == [
        (ADMIN, None),
        (EVE, f"$2b$12$hash-of-{EVE}"),
    ]


def test_the_platform_admins_credentials_never_reach_an_export(tmp_path: Path) -> None:
    secrets = HomeserverSecrets.generate()
    fake_homeserver(tmp_path / "hs", secrets)
    live = tmp_path / "hs" / "homeserver.db"
    with sqlite3.connect(live) as db:
        fill_credentials(db.execute, "?")
    source = source_for(tmp_path / "hs", secrets)
    source = exports.ExportSource(**{**source.__dict__, "platform_users": frozenset({ADMIN})})
    archive = tmp_path / "export.tar.gz"
    exports.build_archive(source, archive, admin_url=None, synapse_version="1")

    files = members(archive)
    # Not a byte of the admin's token anywhere, not even in the database file's free pages.
    assert ADMIN_TOKEN.encode() not in b"".join(files.values())
    assert EVE_TOKEN.encode() in files["database/homeserver.db"]
    manifest = json.loads(files["manifest.json"])
    assert manifest["scrubbed"] == {"platform_users": [ADMIN], "tables": SCRUBBED_TABLES}
    restored = tmp_path / "restored.db"
    restored.write_bytes(files["database/homeserver.db"])
    with sqlite3.connect(restored) as db:
        assert_only_the_tenant_users_credentials_are_left(db.execute)
        assert db.execute("SELECT count(*) FROM events").fetchone() == (2,)
    # The live homeserver keeps its admin: only the copy was scrubbed.
    with sqlite3.connect(live) as db:
        assert db.execute(
            "SELECT token FROM access_tokens WHERE user_id = ?", (ADMIN,)
        ).fetchall() == [(ADMIN_TOKEN,)]


def test_signed_links_verify_only_unchanged() -> None:
    key = "k" * 40
    export_id = uuid.uuid4()
    expires_at = utcnow() + timedelta(hours=1)
    query = links.query(key, export_id, expires_at)
    expires, sig = int(query["expires"]), query["sig"]
    assert links.is_valid(key, export_id, expires, sig)
    assert not links.is_valid(key, export_id, expires + 1, sig)  # stretched expiry
    assert not links.is_valid(key, uuid.uuid4(), expires, sig)  # another export
    assert not links.is_valid("j" * 40, export_id, expires, sig)  # another platform's key
    assert not links.is_valid(key, export_id, expires, sig[:-1] + ("0" if sig[-1] != "0" else "1"))
    assert not links.is_valid(key, export_id, expires, "é" + sig[1:])  # not even ASCII


def test_a_download_is_refused_without_revealing_why(tmp_path: Path) -> None:
    key = "k" * 40
    export_id = uuid.uuid4()
    export = TenantExport(
        id=export_id,
        tenant_id=uuid.uuid4(),
        operation_id=uuid.uuid4(),
        state=ExportState.READY,
        path=export_key(export_id),
        expires_at=utcnow() + timedelta(hours=1),
        created_at=utcnow(),
    )
    good = links.query(key, export.id, export.expires_at)  # type: ignore[arg-type]
    expires, sig = int(good["expires"]), good["sig"]
    found = (export, TenantStatus.ACTIVE)
    assert service.downloadable(found, export.id, expires, sig, key) is export
    store = LocalStore(tmp_path)
    with pytest.raises(service.Gone, match="cleaned up"):
        service.open_download(store, export)  # the store no longer holds it
    (tmp_path / "archive").write_bytes(b"archive")
    store.put_file(export_key(export_id), tmp_path / "archive")
    download = service.open_download(store, export)
    assert download.url is None and download.size == 7 and download.stream is not None
    with download.stream:
        assert download.stream.read() == b"archive"
    with pytest.raises(NotFound) as bad_sig:
        service.downloadable(found, export.id, expires, "0" * 64, key)
    with pytest.raises(NotFound) as unknown:
        service.downloadable(None, export.id, expires, sig, key)
    assert bad_sig.value.detail == unknown.value.detail  # the same answer for both

    past = int(time.time()) - 10
    with pytest.raises(service.Gone):
        service.downloadable(found, export.id, past, links.signature(key, export.id, past), key)
    with pytest.raises(service.Gone, match="deleted"):
        service.downloadable((export, TenantStatus.DELETED), export.id, expires, sig, key)
    export.state = ExportState.EXPIRED
    with pytest.raises(service.Gone):
        service.downloadable(found, export.id, expires, sig, key)


def test_link_signatures_never_reach_the_access_log(caplog: pytest.LogCaptureFixture) -> None:
    access_log.install()
    access_log.install()  # installed once, however often the app is built
    access = logging.getLogger("uvicorn.access")
    assert sum(isinstance(f, access_log.RedactCredentials) for f in access.filters) == 1
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:1",
            "GET",
            "/v1/exports/x/download?expires=1&sig=deadbeef99",
            "1.1",
            200,
        )
    assert "deadbeef99" not in caplog.text and "sig=<redacted>" in caplog.text


# The operation body and the expiry task, on the test database ---------------------------


@pytest.fixture
def ctx(platform_env: dict[str, str], tmp_path: Path) -> Iterator[steps.Context]:
    yield steps.Context(get_settings(), LocalBackend(tmp_path))


def pending_export(ctx: steps.Context) -> tuple[uuid.UUID, uuid.UUID, HomeserverSecrets]:
    """An active tenant with a homeserver on disk and an export operation just accepted."""
    tenant_id = make_tenant()
    secrets = HomeserverSecrets.generate()
    assert isinstance(ctx.backend, LocalBackend)
    fake_homeserver(ctx.backend.tenant_dir(str(tenant_id)), secrets)
    with task_session() as session:
        session.add(
            Homeserver(
                tenant_id=tenant_id,
                backend="local",
                desired_state=HomeserverDesiredState.RUNNING,
                secrets_encrypted=SecretBox(ctx.settings.require_secret_key()).encrypt_json(
                    secrets.to_dict()
                ),
            )
        )
        operation = Operation(
            tenant_id=tenant_id, kind=OperationKind.EXPORT, state=OperationState.RUNNING
        )
        session.add(operation)
        session.flush()
        session.add(
            TenantExport(tenant_id=tenant_id, operation_id=operation.id, state=ExportState.PENDING)
        )
        return tenant_id, operation.id, secrets


def export_row(op_id: uuid.UUID) -> TenantExport:
    with task_session() as session:
        row = session.scalars(select(TenantExport).where(TenantExport.operation_id == op_id)).one()
        session.expunge(row)
        return row


def lease_for(ctx: steps.Context, tenant_id: uuid.UUID) -> Lease:
    lease = Lease(ctx.redis, ctx.keys.tenant_lease(str(tenant_id)))
    assert lease.acquire()
    return lease


def test_a_redelivered_export_makes_no_second_archive(ctx: steps.Context) -> None:
    tenant_id, op_id, secrets = pending_export(ctx)
    lease = lease_for(ctx, tenant_id)
    try:
        export_operation.export(ctx, op_id, lease)
        first = export_row(op_id)
        assert first.state is ExportState.READY and first.path and first.expires_at
        assert first.path == export_key(first.id)
        archive = ctx.settings.data_path / first.path  # the data directory's store
        assert first.size_bytes == archive.stat().st_size
        assert first.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
        ttl = first.expires_at - utcnow()
        assert timedelta(seconds=ctx.settings.export_link_ttl_s - 60) < ttl
        made = archive.stat().st_ino, archive.stat().st_mtime_ns

        export_operation.export(ctx, op_id, lease)  # delivered again after it finished
        # ... and again after the archive was renamed into place but before the row said so
        with task_session() as session:
            row = session.scalars(
                select(TenantExport).where(TenantExport.operation_id == op_id)
            ).one()
            row.state, row.sha256 = ExportState.PENDING, None
        export_operation.export(ctx, op_id, lease)
    finally:
        lease.release()
    again = export_row(op_id)
    assert again.state is ExportState.READY and again.sha256 == first.sha256
    assert (archive.stat().st_ino, archive.stat().st_mtime_ns) == made
    ours = [p.name for p in archive.parent.iterdir() if str(again.id) in p.name]
    assert ours == [f"{again.id}.tar.gz"]
    assert list(exports.work_dir(ctx.settings).iterdir()) == []  # the work copy is gone
    manifest = json.loads(members(archive)["manifest.json"])
    assert manifest["tenant_id"] == str(tenant_id) and manifest["export_id"] == str(again.id)
    with tarfile.open(archive) as tar:
        config = tar.extractfile("homeserver.yaml").read()  # type: ignore[union-attr]
    assert secrets.registration_shared_secret.encode() not in config


def test_expired_exports_lose_their_archive_and_failed_ones_are_recorded(
    ctx: steps.Context,
) -> None:
    tenant_id, op_id, _ = pending_export(ctx)
    lease = lease_for(ctx, tenant_id)
    try:
        export_operation.export(ctx, op_id, lease)
    finally:
        lease.release()
    archive = ctx.settings.data_path / (export_row(op_id).path or "")
    _, failed_op, _ = pending_export(ctx)
    # An archive whose upload finished while its operation gave up: deleted with it.
    leftover = ctx.settings.data_path / export_key(export_row(failed_op).id)
    leftover.write_bytes(b"late")
    with task_session() as session:
        session.get(Operation, failed_op).state = OperationState.FAILED  # type: ignore[union-attr]

    exports.expire_exports(ctx.settings)
    assert archive.exists() and export_row(op_id).state is ExportState.READY  # not yet due
    assert export_row(failed_op).state is ExportState.FAILED
    assert not leftover.exists()

    deleted_id, deleted_op, _ = pending_export(ctx)
    lease = lease_for(ctx, deleted_id)
    try:
        export_operation.export(ctx, deleted_op, lease)
    finally:
        lease.release()
    with task_session() as session:
        row = session.scalars(select(TenantExport).where(TenantExport.operation_id == op_id)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.get(Tenant, deleted_id).status = TenantStatus.DELETED  # type: ignore[union-attr]
    report = exports.expire_exports(ctx.settings)
    assert report["expired"] >= 2
    assert not archive.exists() and export_row(op_id).state is ExportState.EXPIRED
    # A deleted tenant's export goes at once, whatever its expiry.
    assert not (ctx.settings.data_path / (export_row(deleted_op).path or "")).exists()
    assert export_row(deleted_op).state is ExportState.EXPIRED
    assert exports.expire_exports(ctx.settings)["expired"] == 0  # idempotent


@pytest.mark.skipif(
    not os.environ.get("C3_TEST_DATABASE_URL"), reason="needs the test PostgreSQL server"
)
def test_a_scratch_copy_left_by_a_killed_export_is_dropped(ctx: steps.Context) -> None:
    from provisioner import tenant_databases

    admin_url = os.environ["C3_TEST_DATABASE_URL"]
    _, op_id, _ = pending_export(ctx)
    scratch = tenant_databases.scratch_name_for(export_row(op_id).id)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {scratch}")  # as a worker killed mid-scrub leaves it
    with task_session() as session:
        session.get(Operation, op_id).state = OperationState.FAILED  # type: ignore[union-attr]

    settings = ctx.settings.model_copy(update={"tenant_database_url": admin_url})
    assert exports.expire_exports(settings)["failed"] >= 1
    with psycopg.connect(admin_url) as conn:
        left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (scratch,))
        assert left.fetchall() == []


def test_only_an_exportable_tenant_is_exported(ctx: steps.Context) -> None:
    tenant_id, op_id, _ = pending_export(ctx)
    with task_session() as session:
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        tenant.status = TenantStatus.DELETING
    lease = lease_for(ctx, tenant_id)
    try:
        with pytest.raises(Superseded):
            export_operation.export(ctx, op_id, lease)
    finally:
        lease.release()
    assert not ctx.store.exists(export_key(export_row(op_id).id))


def test_with_an_object_store_the_archive_lives_only_in_the_bucket_until_it_expires(
    ctx: steps.Context, s3_server: S3Server, tmp_path: Path
) -> None:
    """The worker builds the archive in a private work directory, puts it in the bucket and
    keeps no copy; the expiry task deletes it from the bucket."""
    bucket = s3_server.bucket(prefix="worker")
    ctx.store = bucket  # what C3_OBJECT_STORE_URL gives the worker
    tenant_id, op_id, _ = pending_export(ctx)
    lease = lease_for(ctx, tenant_id)
    try:
        export_operation.export(ctx, op_id, lease)
    finally:
        lease.release()
    row = export_row(op_id)
    assert row.state is ExportState.READY and row.path == export_key(row.id)
    data = bucket.read_bytes(row.path)
    assert (len(data), hashlib.sha256(data).hexdigest()) == (row.size_bytes, row.sha256)
    assert not (ctx.settings.data_path / row.path).exists()
    assert list(exports.work_dir(ctx.settings).iterdir()) == []
    (tmp_path / "downloaded.tar.gz").write_bytes(data)
    manifest = json.loads(members(tmp_path / "downloaded.tar.gz")["manifest.json"])
    assert manifest["export_id"] == str(row.id)

    with task_session() as session:
        found = session.get(TenantExport, row.id)
        assert found is not None
        found.expires_at = utcnow() - timedelta(seconds=1)
    exports.expire_exports(ctx.settings, bucket)
    assert not bucket.exists(row.path) and export_row(op_id).state is ExportState.EXPIRED
