"""Per-tenant PostgreSQL databases for Synapse (when ``C3_TENANT_DATABASE_URL`` is set).

Each tenant's homeserver gets a login role and a database of the same name
(``c3_t_<tenant id hex>``), owned by that role, created the way Synapse requires (UTF8, C
collation and ctype, from ``template0``). PUBLIC's CONNECT and TEMPORARY are revoked, so a
tenant's role can reach its own database only, never another tenant's. The choice between
PostgreSQL and SQLite is made once, when the homeserver record is created, and kept in
``Homeserver.database_name``: switching an existing homeserver to another database would start
it empty.

The URL's role needs CREATEROLE and CREATEDB (a superuser works too). A non-superuser grants
itself membership in each tenant role: PostgreSQL requires it to create a database owned by
that role, and it lets the platform dump and drop the database later.

Its SQL stays here, not in ``provisioner.repository``: it administers PostgreSQL roles and
databases through the tenant database URL, not the platform's own rows.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from platform_core import object_store
from platform_core.errors import PermanentError, TemporaryError
from platform_core.object_store import ObjectStore
from platform_core.private_files import private_temp_dir, work_root
from platform_core.settings import Settings
from provisioner.synapse_config import HomeserverSecrets

ROLE_PREFIX = "c3_t_"
_NAME = re.compile(r"^c3_t_[0-9a-f]{32}$")
# Scratch copies an export scrubs before dumping them again (one per export, dropped after).
SCRATCH_PREFIX = "c3_x_"
_SCRATCH = re.compile(r"^c3_x_[0-9a-f]{32}$")
T = TypeVar("T")
# Synapse's connection pool per homeserver; the role's connection limit leaves room for
# Synapse's start-up connection and an operator's psql, and stops one tenant from using up
# the cluster's max_connections.
POOL_MIN, POOL_MAX = 1, 5
CONNECTION_LIMIT = 20
_DUMP_TIMEOUT_S = 3600.0


def database_name_for(tenant_id: uuid.UUID) -> str:
    """The tenant's role and database name: derived from the id, so every retry finds it."""
    return ROLE_PREFIX + tenant_id.hex


def choose_database(settings: Settings, tenant_id: uuid.UUID) -> str | None:
    """For a new homeserver record: its PostgreSQL database name, or None for SQLite."""
    return database_name_for(tenant_id) if settings.tenant_database_url else None


def require_admin_url(settings: Settings) -> str:
    if not settings.tenant_database_url:
        raise PermanentError(
            "this homeserver keeps its data in its own PostgreSQL database, "
            "but C3_TENANT_DATABASE_URL is not set"
        )
    return settings.tenant_database_url


def _conninfo(url: str) -> dict[str, Any]:
    """libpq parameters of a ``postgresql://`` URL (SQLAlchemy's ``+driver`` suffix allowed)."""
    return conninfo_to_dict(re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url))


def _check_name(name: str) -> None:
    # Guards every statement built from a name: nothing but a tenant database is ever touched.
    if not _NAME.match(name):
        raise PermanentError(f"{name!r} is not a tenant database name")


@contextmanager
def _connect(url: str, **override: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection (CREATE/DROP DATABASE cannot run in a transaction)."""
    params = {**_conninfo(url), **override}
    try:
        conn = psycopg.connect(make_conninfo(**params), autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        where = f"{params.get('host', 'local socket')}:{params.get('port', 5432)}"
        raise TemporaryError(f"PostgreSQL at {where} is unreachable: {exc}") from exc
    try:
        yield conn
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermanentError(
            f"the platform's PostgreSQL role lacks a privilege: {exc.diag.message_primary}"
        ) from exc
    except psycopg.OperationalError as exc:
        raise TemporaryError(f"PostgreSQL failed: {exc}") from exc
    finally:
        conn.close()


# Create ------------------------------------------------------------------------------

_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


def ensure_database(admin_url: str, name: str, password: str) -> None:
    """Role and database exist, isolated and as Synapse needs them. Idempotent: an existing
    role with the right attributes and an existing database are left untouched (the role's
    password is set when it is created and never re-set)."""
    _check_name(name)
    with _connect(admin_url) as conn:
        _ensure_role(conn, name, password)
        _ensure_membership(conn, name)
        _ensure_tenant_database(conn, name)
        _ensure_private(conn, name)


def _ensure_role(conn: psycopg.Connection[Any], name: str, password: str) -> None:
    role = sql.Identifier(name)
    row = conn.execute(
        "SELECT rolcanlogin AND NOT (rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication"
        " OR rolbypassrls) AND rolconnlimit = %s FROM pg_roles WHERE rolname = %s",
        (CONNECTION_LIMIT, name),
    ).fetchone()
    attributes = sql.SQL(f"{_ROLE_ATTRIBUTES} CONNECTION LIMIT {CONNECTION_LIMIT:d}")
    if row is None:
        # The server gets a SCRAM verifier, never the password itself (nor do its logs).
        verifier = conn.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256")
        conn.execute(
            sql.SQL("CREATE ROLE {} {} PASSWORD {}").format(
                role, attributes, sql.Literal(verifier.decode())
            )
        )
    elif not row[0]:
        conn.execute(sql.SQL("ALTER ROLE {} {}").format(role, attributes))


def _ensure_membership(conn: psycopg.Connection[Any], name: str) -> None:
    row = conn.execute(
        "SELECT rolsuper OR pg_has_role(current_user, %s, 'MEMBER') FROM pg_roles"
        " WHERE rolname = current_user",
        (name,),
    ).fetchone()
    if row is not None and not row[0]:
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(name)))


def _ensure_tenant_database(conn: psycopg.Connection[Any], name: str) -> None:
    row = conn.execute(
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype"
        " FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    if row is None:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} OWNER {} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
                " TEMPLATE template0"
            ).format(sql.Identifier(name), sql.Identifier(name))
        )
        return
    owner, encoding, collate, ctype = row
    if (encoding, collate, ctype) != ("UTF8", "C", "C"):
        # Synapse refuses other collations, and a database's collation cannot be changed.
        raise PermanentError(
            f"database {name} exists with {encoding}/{collate}/{ctype}, not UTF8/C/C; "
            "an operator must move or drop it"
        )
    if owner != name:
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(name), sql.Identifier(name)
            )
        )


def _ensure_private(conn: psycopg.Connection[Any], name: str) -> None:
    """Only the owner (and the platform) may connect: PUBLIC's default CONNECT and TEMPORARY
    are revoked, which keeps every other tenant's role out."""
    row = conn.execute(
        "SELECT has_database_privilege('public', %s, 'CONNECT')"
        " OR has_database_privilege('public', %s, 'TEMPORARY')",
        (name, name),
    ).fetchone()
    if row is not None and row[0]:
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))


def protect_platform_database(platform_url: str) -> bool:
    """Revoke PUBLIC's CONNECT and TEMPORARY on the platform's own PostgreSQL database when
    the platform's role owns it (the owner keeps both), so tenant roles on the same cluster
    cannot connect to it. A database owned by another role is left alone (the platform may
    itself connect through PUBLIC's grant), and so are the cluster's maintenance databases,
    which other tools and roles rely on. Returns True if it revoked anything."""
    if not platform_url.startswith("postgres"):
        return False
    with _connect(platform_url) as conn:
        row = conn.execute(
            "SELECT d.datdba = r.oid AND (has_database_privilege('public', d.datname, 'CONNECT')"
            " OR has_database_privilege('public', d.datname, 'TEMPORARY')), d.datname"
            " FROM pg_database d, pg_roles r"
            " WHERE d.datname = current_database() AND r.rolname = current_user"
            " AND d.datname NOT IN ('postgres', 'template0', 'template1')"
        ).fetchone()
        if row is None or not row[0]:
            return False
        conn.execute(
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(row[1]))
        )
        return True


def ensure_ready(settings: Settings, name: str, secrets: HomeserverSecrets) -> None:
    """The provisioning step: the tenant's database is ready and the platform's is closed."""
    ensure_database(require_admin_url(settings), name, secrets.database_password)
    protect_platform_database(settings.effective_database_url)


# Synapse's view ----------------------------------------------------------------------


def synapse_database(
    settings: Settings, name: str | None, secrets: HomeserverSecrets
) -> dict[str, Any] | None:
    """Synapse's ``database`` section for the tenant's own database (None: SQLite). Host,
    port and TLS options come from C3_TENANT_DATABASE_URL; the role is the tenant's."""
    if name is None:
        return None
    params = {
        key: value
        for key, value in _conninfo(require_admin_url(settings)).items()
        if key not in ("user", "password", "passfile", "dbname")
    }
    args: dict[str, Any] = {
        **params,
        "user": name,
        "password": secrets.database_password,
        "dbname": name,
        "cp_min": POOL_MIN,
        "cp_max": POOL_MAX,
        # Notice a dead server or a dropped NAT entry within about a minute.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    return {"name": "psycopg2", "args": args}


# Dump and drop -----------------------------------------------------------------------


def dump_database(admin_url: str, database_name: str, dest: Path, *, check: bool = True) -> None:
    """``pg_dump --format=custom`` of a tenant database into ``dest`` (mode 0600, written
    atomically: ``dest`` exists only once complete). The password reaches pg_dump through
    its environment, never its command line. (``check=False``: a scratch copy, whose name
    the caller checked.)"""
    if check:
        _check_name(database_name)
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise PermanentError("pg_dump is not installed (PostgreSQL client tools)")
    params, env = _client_params(admin_url, database_name)
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    try:
        done = subprocess.run(
            [
                pg_dump,
                "--format=custom",
                "--no-password",
                f"--file={partial}",
                f"--dbname={make_conninfo(**params)}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=_DUMP_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        partial.unlink(missing_ok=True)
        raise TemporaryError(f"pg_dump of {database_name} timed out") from exc
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise TemporaryError(f"pg_dump of {database_name} failed: {done.stderr.strip()[-500:]}")
    partial.replace(dest)


def scratch_name_for(export_id: uuid.UUID) -> str:
    """The scratch database of one export: derived from its id, so a retry finds (and drops)
    what a killed attempt left behind."""
    return SCRATCH_PREFIX + export_id.hex


def dump_scrubbed(
    admin_url: str,
    database_name: str,
    dest: Path,
    *,
    scratch: str,
    scrub: Callable[[psycopg.Connection[Any]], T],
) -> T:
    """``pg_dump --format=custom`` of a tenant database after ``scrub`` ran on a copy of it:
    the database is dumped (one consistent snapshot), restored into the private scratch
    database ``scratch`` owned by the tenant's role, scrubbed there in one transaction as that
    role, dumped again into ``dest``, and the scratch database dropped. The live database is
    never changed. Returns what ``scrub`` returned."""
    _check_name(database_name)
    if not _SCRATCH.match(scratch):
        raise PermanentError(f"{scratch!r} is not a scratch database name")
    raw = dest.with_name(dest.name + ".raw")
    dump_database(admin_url, database_name, raw)
    try:
        drop_scratch(admin_url, scratch)
        with _connect(admin_url) as conn:
            # Private from the start: it holds the tenant's data until it is dropped.
            conn.execute(
                sql.SQL(
                    "CREATE DATABASE {} OWNER {} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
                    " TEMPLATE template0"
                ).format(sql.Identifier(scratch), sql.Identifier(database_name))
            )
            conn.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(scratch))
            )
        _restore(admin_url, raw, scratch, role=database_name)
        with _connect(admin_url, dbname=scratch) as conn:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(database_name)))
                result = scrub(conn)
        dump_database(admin_url, scratch, dest, check=False)
    finally:
        raw.unlink(missing_ok=True)
        drop_scratch(admin_url, scratch)
    return result


def drop_scratch(admin_url: str, scratch: str) -> None:
    """Drop an export's scratch database (one a killed export left behind). Idempotent."""
    if not _SCRATCH.match(scratch):
        raise PermanentError(f"{scratch!r} is not a scratch database name")
    with _connect(admin_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch))
        )


def _restore(admin_url: str, dump: Path, database_name: str, *, role: str) -> None:
    """``pg_restore`` of ``dump`` into ``database_name`` as ``role`` (all or nothing)."""
    pg_restore = shutil.which("pg_restore")
    if pg_restore is None:
        raise PermanentError("pg_restore is not installed (PostgreSQL client tools)")
    params, env = _client_params(admin_url, database_name)
    try:
        done = subprocess.run(
            [
                pg_restore,
                "--no-password",
                "--exit-on-error",
                "--single-transaction",
                f"--role={role}",
                f"--dbname={make_conninfo(**params)}",
                str(dump),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=_DUMP_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise TemporaryError(f"pg_restore into {database_name} timed out") from exc
    if done.returncode != 0:
        raise TemporaryError(
            f"pg_restore into {database_name} failed: {done.stderr.strip()[-500:]}"
        )


def _client_params(admin_url: str, database_name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """libpq parameters for a client tool on ``database_name``, and its environment: the
    password travels there, never on a command line."""
    params = _conninfo(admin_url)
    password = params.pop("password", None)
    params["dbname"] = database_name
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = str(password)
    return params, env


def database_exists(admin_url: str, name: str) -> bool:
    _check_name(name)
    with _connect(admin_url) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            is not None
        )


def drop_database(admin_url: str, name: str) -> None:
    """Drop the tenant's database (closing its connections) and its role. Idempotent."""
    _check_name(name)
    with _connect(admin_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def retire(
    settings: Settings, name: str, tenant_id: str, store: ObjectStore, *, keep: bool
) -> str | None:
    """Delete-time step: with ``keep``, dump the database into the object store beside the
    tenant's data archive (``archive/<tenant id>-<UTC stamp>.pgdump``, so retention and purge
    find it; built in a private work directory, removed once stored), then drop database and
    role. Idempotent across redelivery: a database already gone is not dumped again, and an
    existing dump is kept (it was made after the homeserver stopped). Returns the dump's key."""
    admin_url = require_admin_url(settings)
    existing = [
        item.key
        for item in store.list(object_store.archive_prefix(tenant_id))
        if item.key.endswith(".pgdump")
    ]
    dump = existing[-1] if existing else None
    if keep and dump is None and database_exists(admin_url, name):
        dump = object_store.archive_key(tenant_id, ".pgdump")
        with private_temp_dir(work_root(settings.data_path), prefix="dump-") as work:
            local = work / "database.pgdump"
            dump_database(admin_url, name, local)
            store.put_file(dump, local)
    drop_database(admin_url, name)
    return dump if keep else None
