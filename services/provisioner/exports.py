"""Tenant exports: one ``.tar.gz`` of a tenant's homeserver that restores into a fresh Synapse.

The archive is built in a private work directory on the worker (``<data dir>/work/``), then
put in the platform's object store under ``exports/<export id>.tar.gz``
(platform_core.object_store: the data directory, or S3 with ``C3_OBJECT_STORE_URL``) and the
local copy removed. It holds::

    database/homeserver.db      SQLite, copied with SQLite's online backup API
    database/homeserver.pgdump  or: ``pg_dump -Fc`` of the tenant's own PostgreSQL database
    media_store/…               uploaded media and thumbnails
    signing.key                 the homeserver's signing key (its identity towards other servers)
    homeserver.yaml             the config, with the platform's operating secrets taken out
    manifest.json               format version, tenant, server_name, Synapse version, created_at
                                (UTC), what was scrubbed, and the SHA-256 and size of every
                                other file

Database scrub: the platform's own accounts on the homeserver (its admin ``@c3-admin:…``) lose
every credential and device in the *snapshot* (never on the live homeserver): their access and
refresh tokens, devices, device and cross-signing keys, to-device messages, OpenID and login
tokens, client IPs (which carry access tokens), pushers, key backups, and their password hash.
An archive thus never holds a credential of the platform's; the manifest's ``scrubbed`` names
the accounts and tables. The tenant's own users keep their sessions (the archive is the
tenant's data, and a restore keeps them signed in), so an archive is as sensitive as the
homeserver itself. SQLite: the backup copy is scrubbed with ``secure_delete`` and vacuumed.
PostgreSQL: the dump is restored into a private scratch database, scrubbed there, dumped again,
and the scratch database dropped.

Config redaction: ``registration_shared_secret``, ``macaroon_secret_key`` and ``form_secret``
are how the *platform* operates the homeserver, so they are removed. A restore needs none of
them: Synapse derives a macaroon key from the signing key, access tokens live in the database
(users stay signed in), and whoever restores sets their own shared secret if they want one.
Any other secret in the config (TURN shared secret, OIDC client secret, the tenant database
role's password) is replaced by ``<redacted>`` so the file still parses; the manifest lists
every path removed or replaced.

Restoring (tested end to end for both engines: tests/test_export_end_to_end.py and
tests/test_tenant_postgres_end_to_end.py). The exported ``homeserver.yaml`` is a reference,
not a config to run as is: its paths and database section are the platform's. Check every
file against ``manifest.json``, then run a Synapse of the manifest's ``synapse_version`` or
newer (it upgrades an older schema on start, and refuses a newer one) whose config has the
archive's ``server_name``, ``signing_key_path`` → ``signing.key``, ``media_store_path`` →
``media_store/`` and, for ``database.engine``:

- ``sqlite3``: ``database/homeserver.db`` as the ``sqlite3`` database file.
- ``postgresql``: a new database restored from ``database/homeserver.pgdump`` with
  ``pg_restore`` of the dump's PostgreSQL major version or newer, as a superuser::

      createuser --login --pwprompt synapse
      createdb --owner=synapse --encoding=UTF8 --lc-collate=C --lc-ctype=C \\
          --template=template0 synapse
      pg_restore --dbname=synapse --role=synapse --no-owner --no-privileges \\
          --exit-on-error --single-transaction database/homeserver.pgdump

  then a ``psycopg2`` database section with that role, its password and database. The dump
  names the tenant's own role (``c3_t_<tenant id hex>``) as owner of every object, which
  exists only on the platform's cluster: ``--no-owner --no-privileges`` with ``--role`` make
  the new role own everything instead (without ``--no-owner`` the restore fails on the
  missing role). A non-superuser runs the restore as the new role itself (``--username``
  instead of ``--role``). Synapse needs the C collation, hence ``template0``.

Made by an operation body (``export``) under the tenant's lease; the beat task
``expire_exports`` deletes archives past their expiry from the store. Both are idempotent.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

import yaml

from platform_core import object_store
from platform_core.db import task_session
from platform_core.errors import PermanentError, TemporaryError
from platform_core.models import (
    ExportState,
    TenantExport,
    TenantStatus,
    utcnow,
)
from platform_core.object_store import ObjectStore
from platform_core.private_files import create_private, private_temp_dir, work_root
from platform_core.settings import Settings
from provisioner import repository, tenant_databases

log = logging.getLogger(__name__)

ARCHIVE_FORMAT = "c3-tenant-export"
FORMAT_VERSION = 1
REDACTED = "<redacted>"
# The platform's own handles on the homeserver: removed from the exported config.
PLATFORM_SECRET_KEYS = ("registration_shared_secret", "macaroon_secret_key", "form_secret")
# Config keys whose values are secrets whatever they hold (``*_path`` keys name files).
_SECRET_WORDS = ("secret", "password")
_CHUNK = 1024 * 1024
# gzip's own default. tarfile's 9 took twice as long for the same size: media (most of the
# bytes) is compressed already.
_GZIP_LEVEL = 6
_GONE = (TenantStatus.DELETING, TenantStatus.DELETED)
# Work directories of exports that died (kill -9) are removed after this long.
_STALE_WORK_AFTER = timedelta(hours=2)


# Paths --------------------------------------------------------------------------------


def work_dir(settings: Settings) -> Path:
    """Where workers build archives before they go to the object store (private dirs)."""
    return work_root(settings.data_path)


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


# What is exported ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSource:
    """One tenant's homeserver as the archive sees it."""

    export_id: uuid.UUID
    tenant_id: uuid.UUID
    server_name: str
    data_dir: Path  # homeserver.yaml, signing.key, media_store/ (and homeserver.db on SQLite)
    database_name: str | None = None  # its own PostgreSQL database; None: SQLite in data_dir
    # Every secret value the config may hold, redacted wherever it appears.
    secrets: frozenset[str] = field(default_factory=frozenset, repr=False)
    # The platform's own accounts: their credentials and devices are scrubbed from the copy.
    platform_users: frozenset[str] = field(default_factory=frozenset)


@dataclass
class _Manifest:
    source: ExportSource
    synapse_version: str
    database: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    scrubbed: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)  # when the database was snapshotted

    def render(self) -> bytes:
        body = {
            "format": ARCHIVE_FORMAT,
            "format_version": FORMAT_VERSION,
            "export_id": str(self.source.export_id),
            "tenant_id": str(self.source.tenant_id),
            "server_name": self.source.server_name,
            "synapse_version": self.synapse_version,
            "created_at": self.created_at.isoformat(),
            "database": self.database,
            "scrubbed": self.scrubbed,
            "config_redactions": {
                "removed": self.removed,
                "replaced": self.replaced,
                "placeholder": REDACTED,
            },
            "files": dict(sorted(self.files.items())),
        }
        return json.dumps(body, indent=2).encode()


# The archive --------------------------------------------------------------------------


def build_archive(
    source: ExportSource,
    dest: Path,
    *,
    admin_url: str | None,
    synapse_version: str,
    keep_alive: Callable[[], None] = lambda: None,
) -> None:
    """Write the archive to ``dest.partial`` (0600) and rename it to ``dest`` when complete.

    The database is snapshotted first: Synapse writes a media file before it records it, so
    every file the snapshot refers to is complete on disk by the time media is copied."""
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = _partial(dest)
    partial.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".work-") as work:
        manifest = _Manifest(source, synapse_version)
        database, member, manifest.scrubbed = _snapshot_database(source, Path(work), admin_url)
        keep_alive()
        manifest.database = {
            "engine": "postgresql" if source.database_name else "sqlite3",
            "path": member,
        }
        try:
            _write_tar(partial, source, manifest, database, member, keep_alive)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    partial.replace(dest)


def _write_tar(
    partial: Path,
    source: ExportSource,
    manifest: _Manifest,
    database: Path,
    member: str,
    keep_alive: Callable[[], None],
) -> None:
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=_GZIP_LEVEL) as tar:
            _add_file(tar, manifest, database, member)
            config = _redacted_config(source, manifest)
            _add_bytes(tar, manifest, "homeserver.yaml", config)
            _add_file(tar, manifest, source.data_dir / "signing.key", "signing.key")
            for path, name in _media_files(source.data_dir / "media_store"):
                try:
                    _add_file(tar, manifest, path, name)
                except FileNotFoundError:
                    continue  # an upload that failed and was removed: nothing refers to it
                keep_alive()
            _add_bytes(tar, None, "manifest.json", manifest.render())
        raw.flush()
        os.fsync(raw.fileno())


def _snapshot_database(
    source: ExportSource, work: Path, admin_url: str | None
) -> tuple[Path, str, dict[str, Any]]:
    """A scrubbed snapshot of the homeserver's database, its archive name, and what the
    scrub removed (for the manifest)."""
    users = sorted(source.platform_users)
    if source.database_name is not None:
        if not admin_url:
            raise PermanentError(
                "the tenant's data is in PostgreSQL but C3_TENANT_DATABASE_URL is not set"
            )
        dump = work / "homeserver.pgdump"
        tables = tenant_databases.dump_scrubbed(
            admin_url,
            source.database_name,
            dump,
            scratch=tenant_databases.scratch_name_for(source.export_id),
            scrub=lambda conn: scrub_postgres(conn, users),
        )
        return dump, "database/homeserver.pgdump", _scrub_report(users, tables)
    copy = work / "homeserver.db"
    backup_sqlite(source.data_dir / "homeserver.db", copy)
    tables = scrub_sqlite(copy, users)
    return copy, "database/homeserver.db", _scrub_report(users, tables)


# Synapse tables that hold a user's credentials, devices or device keys, and the column
# naming the user. Tables missing in a Synapse version are skipped.
CREDENTIAL_TABLES: tuple[tuple[str, str], ...] = (
    ("access_tokens", "user_id"),
    ("refresh_tokens", "user_id"),
    ("login_tokens", "user_id"),
    ("open_id_tokens", "user_id"),
    ("user_ips", "user_id"),  # holds the access token of every recorded request
    ("pushers", "user_name"),
    ("devices", "user_id"),
    ("device_auth_providers", "user_id"),
    ("dehydrated_devices", "user_id"),
    ("device_inbox", "user_id"),
    ("e2e_device_keys_json", "user_id"),
    ("e2e_one_time_keys_json", "user_id"),
    ("e2e_fallback_keys_json", "user_id"),
    ("e2e_cross_signing_keys", "user_id"),
    ("e2e_cross_signing_signatures", "user_id"),
    ("user_signature_stream", "from_user_id"),
    ("e2e_room_keys", "user_id"),
    ("e2e_room_keys_versions", "user_id"),
)
PASSWORD_COLUMN = "users.password_hash"


def _scrub_report(users: list[str], tables: list[str]) -> dict[str, Any]:
    return {"platform_users": users, "tables": tables}


def scrub_sqlite(database: Path, users: list[str]) -> list[str]:
    """Remove the platform users' credentials from a SQLite copy (never the live database);
    returns the tables scrubbed. ``secure_delete`` and ``VACUUM`` leave no trace of the
    removed rows in free pages."""
    if not users:
        return []
    marks = ", ".join("?" for _ in users)
    conn = sqlite3.connect(database)
    try:
        conn.execute("PRAGMA secure_delete=ON")
        present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        scrubbed = []
        with conn:
            for table, column in CREDENTIAL_TABLES:
                if table in present:
                    conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", users)
                    scrubbed.append(table)
            if "users" in present:
                conn.execute(
                    f"UPDATE users SET password_hash = NULL WHERE name IN ({marks})", users
                )
                scrubbed.append(PASSWORD_COLUMN)
        conn.execute("VACUUM")
    except sqlite3.Error as exc:
        raise TemporaryError(f"scrubbing the database copy failed: {exc}") from exc
    finally:
        conn.close()
    return scrubbed


def scrub_postgres(conn: Any, users: list[str]) -> list[str]:
    """The same scrub on a psycopg connection to a scratch copy of the tenant's database."""
    if not users:
        return []
    present = {
        row[0]
        for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    }
    scrubbed = []
    for table, column in CREDENTIAL_TABLES:
        if table in present:
            conn.execute(f"DELETE FROM {table} WHERE {column} = ANY(%s)", (users,))
            scrubbed.append(table)
    if "users" in present:
        conn.execute("UPDATE users SET password_hash = NULL WHERE name = ANY(%s)", (users,))
        scrubbed.append(PASSWORD_COLUMN)
    return scrubbed


def backup_sqlite(database: Path, dest: Path) -> None:
    """A consistent copy of a live SQLite database through SQLite's online backup API, in one
    step (so it is one snapshot even while Synapse writes; WAL readers do not block it).
    Copying the file instead could catch half a transaction or miss what is still in the WAL.
    The copy is switched to a self-contained rollback journal (no -wal file to carry)."""
    if not database.is_file():
        raise PermanentError("the homeserver has no database yet")
    source = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        # Created private (SQLite takes an empty file as a new database), not chmodded after.
        dest.unlink(missing_ok=True)
        os.close(create_private(dest))
        target = sqlite3.connect(dest)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise TemporaryError(f"database backup failed: {exc}") from exc
    finally:
        source.close()


def _redacted_config(source: ExportSource, manifest: _Manifest) -> bytes:
    config = yaml.safe_load((source.data_dir / "homeserver.yaml").read_text())
    if not isinstance(config, dict):
        raise PermanentError("the homeserver's config is not a mapping")
    for key in PLATFORM_SECRET_KEYS:
        if config.pop(key, None) is not None:
            manifest.removed.append(key)
    redacted = _redact(config, "", source.secrets, manifest.replaced)
    return yaml.safe_dump(redacted, sort_keys=True).encode()


def _redact(value: Any, path: str, secrets: frozenset[str], replaced: list[str]) -> Any:
    """``value`` with every secret replaced by the placeholder: any string holding a known
    secret value, and any string under a key that names a secret."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if isinstance(item, str) and _names_secret(str(key)):
                replaced.append(child)
                out[key] = REDACTED
            else:
                out[key] = _redact(item, child, secrets, replaced)
        return out
    if isinstance(value, list):
        return [_redact(item, f"{path}[{i}]", secrets, replaced) for i, item in enumerate(value)]
    if isinstance(value, str) and any(secret in value for secret in secrets):
        replaced.append(path)
        return REDACTED
    return value


def _names_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS) and not lowered.endswith("_path")


def _media_files(root: Path) -> Iterator[tuple[Path, str]]:
    """Every regular file under the media store, in a stable order (symlinks skipped)."""
    if not root.is_dir():
        return
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                yield path, f"media_store/{path.relative_to(root).as_posix()}"


class _HashingReader:
    """Feeds a file to tarfile while hashing exactly the bytes that went into the archive."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self.digest.update(chunk)
        return chunk


def _add_file(tar: tarfile.TarFile, manifest: _Manifest, path: Path, name: str) -> None:
    with open(path, "rb") as handle:
        info = tar.gettarinfo(fileobj=handle, arcname=name)
        info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
        reader = _HashingReader(handle)
        tar.addfile(info, reader)  # type: ignore[arg-type]
    manifest.files[name] = {"sha256": reader.digest.hexdigest(), "size": info.size}


def _add_bytes(tar: tarfile.TarFile, manifest: _Manifest | None, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    tar.addfile(info, io.BytesIO(data))
    if manifest is not None:
        manifest.files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def file_digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 (hex) of a file."""
    with open(path, "rb") as handle:
        return _stream_digest(handle)


def stored_digest(store: ObjectStore, key: str) -> tuple[int, str]:
    """Size and SHA-256 (hex) of an object in the store (read back in full)."""
    with store.open(key) as handle:
        return _stream_digest(handle)


def _stream_digest(handle: IO[bytes]) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def publish_archive(
    store: ObjectStore, settings: Settings, build: Callable[[Path], None], key: str
) -> tuple[int, str]:
    """Build an archive with ``build(dest)`` in a private work directory, put it in ``store``
    under ``key`` and remove the local copy; returns its size and SHA-256 (hex)."""
    with private_temp_dir(work_dir(settings), prefix="export-") as work:
        local = work / Path(key).name
        build(local)
        size, digest = file_digest(local)
        store.put_file(key, local)
    return size, digest


def synapse_version(python: str | None) -> str:
    """The version of the Synapse that runs tenants (the interpreter C3_SYNAPSE_PYTHON names,
    or this one)."""
    if python is None or python == sys.executable:
        try:
            return version("matrix-synapse")
        except PackageNotFoundError as exc:
            raise PermanentError("matrix-synapse is not installed") from exc
    asked = subprocess.run(
        [python, "-c", "from importlib.metadata import version; print(version('matrix-synapse'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if asked.returncode != 0:
        raise TemporaryError(f"cannot read the Synapse version of {python}")
    return asked.stdout.strip()


# Expiry -------------------------------------------------------------------------------


def expire_exports(settings: Settings, store: ObjectStore | None = None) -> dict[str, int]:
    """Delete the archives of exports past their expiry or of deleted tenants (state →
    expired: a deleted tenant's data must not outlive it here), record exports
    whose operation gave up as failed (state → failed, leftovers deleted), and remove work
    directories of exports that died mid-way. Idempotent: a second run finds nothing to do."""
    store = store if store is not None else object_store.from_settings(settings)
    now = utcnow()
    report = {"expired": 0, "failed": 0, "stale_work_dirs": 0}
    with task_session() as session:
        due = repository.ready_exports_due(session, now, _GONE)
        for row in due:
            _delete_archive(settings, store, row)
            row.state = ExportState.EXPIRED
            report["expired"] += 1
        given_up = repository.pending_exports_of_failed_operations(session)
        for row in given_up:
            _delete_archive(settings, store, row)
            row.state = ExportState.FAILED
            report["failed"] += 1
    report["stale_work_dirs"] = _remove_stale_work_dirs(settings, now)
    if any(report.values()):
        log.info("expire exports: %s", report)
    return report


def _delete_archive(settings: Settings, store: ObjectStore, row: TenantExport) -> None:
    store.delete(object_store.export_key(row.id))
    if row.path and Path(row.path).is_absolute():
        Path(row.path).unlink(missing_ok=True)  # written by a release before the object store
    if settings.tenant_database_url and row.state is ExportState.PENDING:
        # A worker killed mid-export leaves its unscrubbed scratch copy: never keep it.
        tenant_databases.drop_scratch(
            settings.tenant_database_url, tenant_databases.scratch_name_for(row.id)
        )


def _remove_stale_work_dirs(settings: Settings, now: datetime) -> int:
    """Work directories of archives whose worker died (kill -9) before it cleaned up."""
    root = work_dir(settings)
    if not root.is_dir():
        return 0
    cutoff = (now - _STALE_WORK_AFTER).timestamp()
    removed = 0
    for work in root.iterdir():
        if work.is_dir() and work.stat().st_mtime < cutoff:
            shutil.rmtree(work, ignore_errors=True)
            removed += 1
    return removed
