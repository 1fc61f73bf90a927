"""Exports end to end: fill a homeserver through the proxy, export it, restore the archive into a
fresh Synapse and check it serves the same user, messages and media."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from psycopg.conninfo import make_conninfo

from c3.local_run import free_port
from platform_core.object_store import S3Store
from provisioner import tenant_databases
from provisioner.synapse_config import HomeserverSecrets, HomeserverSpec, write_homeserver_files
from tests.helpers.platform import RunningPlatform, poll, stop_process, wait_operation

PASSWORD = "eve-secret-1234"


MESSAGES = [f"quarterly numbers, part {n}" for n in range(6)]


def matrix(base: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base, headers=headers, timeout=30)


def login(base: str, user: str) -> httpx.Response:
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}}
    return httpx.post(
        f"{base}/_matrix/client/v3/login", json={**body, "password": PASSWORD}, timeout=30
    )


def fill_homeserver(base: str, token: str) -> tuple[str, str, bytes]:
    """A room with several messages and an uploaded image; returns (room, mxc, image bytes)."""
    image = b"\x89PNG\r\n\x1a\n" + os.urandom(64 * 1024)
    with matrix(base, token) as hs:
        room = hs.post("/_matrix/client/v3/createRoom", json={"name": "finance"})
        assert room.status_code == 200, room.text
        room_id = room.json()["room_id"]
        for n, body in enumerate(MESSAGES):
            sent = hs.put(
                f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{n}",
                json={"msgtype": "m.text", "body": body},
            )
            assert sent.status_code == 200, sent.text
        uploaded = hs.post(
            "/_matrix/media/v3/upload",
            params={"filename": "chart.png"},
            content=image,
            headers={"Content-Type": "image/png"},
        )
        assert uploaded.status_code == 200, uploaded.text
        mxc = uploaded.json()["content_uri"]
        sent = hs.put(
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/img",
            json={"msgtype": "m.image", "body": "chart.png", "url": mxc},
        )
        assert sent.status_code == 200, sent.text
    return room_id, mxc, image


def timeline(base: str, token: str, room_id: str) -> list[dict[str, Any]]:
    with matrix(base, token) as hs:
        answer = hs.get(
            f"/_matrix/client/v3/rooms/{room_id}/messages", params={"dir": "f", "limit": 100}
        )
    assert answer.status_code == 200, answer.text
    return [e for e in answer.json()["chunk"] if e["type"] == "m.room.message"]


def media(base: str, token: str, mxc: str) -> bytes:
    server, media_id = mxc.removeprefix("mxc://").split("/", 1)
    with matrix(base, token) as hs:
        answer = hs.get(f"/_matrix/client/v1/media/download/{server}/{media_id}")
    assert answer.status_code == 200, answer.text
    return answer.content


def extract(archive: Path, into: Path) -> dict[str, Any]:
    """Unpack and check every file against the manifest; returns the manifest."""
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(into, filter="data")
    manifest = json.loads((into / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        data = (into / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert len(data) == entry["size"], name
    return manifest


@contextmanager
def restored_synapse(
    unpacked: Path, server_name: str, home: Path, database: dict[str, Any] | None = None
) -> Iterator[str]:
    """A fresh Synapse on a new port and data directory from an unpacked export: config
    rendered by provisioner.synapse_config with the archive's signing key, the restored
    database and media. ``database`` is Synapse's section for a database the caller restored
    the archive's PostgreSQL dump into; None: the archive's SQLite file, copied. None of the
    platform's operating secrets is given to it (the export leaves them out): it must run
    without them."""
    port = free_port()
    key = (unpacked / "signing.key").read_text().strip()
    secrets = dataclasses.replace(HomeserverSecrets.generate(), signing_key=key)
    spec = HomeserverSpec(
        server_name=server_name,
        public_baseurl=f"http://127.0.0.1:{port}/",
        port=port,
        bind_address="127.0.0.1",
        data_dir=home,
        limits={},
        database=database,
    )
    write_homeserver_files(spec, secrets)
    config_path = home / "homeserver.yaml"
    config = yaml.safe_load(config_path.read_text())
    for name in ("registration_shared_secret", "macaroon_secret_key", "form_secret"):
        config.pop(name)
    config_path.write_text(yaml.safe_dump(config))
    if database is None:
        shutil.copyfile(unpacked / "database" / "homeserver.db", home / "homeserver.db")
    shutil.rmtree(home / "media_store")
    shutil.copytree(unpacked / "media_store", home / "media_store")
    url = f"http://127.0.0.1:{port}"
    with open(home / "stdout.log", "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(config_path)],
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def healthy() -> bool:
        if process.poll() is not None:
            log = (home / "stdout.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"restored Synapse exited ({process.returncode}):\n{log}")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        poll(healthy, timeout=90, what="the restored Synapse to be healthy")
        yield url
    finally:
        stop_process(process, timeout=30)


def live_admin_tokens(platform: RunningPlatform, tenant: dict[str, Any]) -> list[str]:
    """The platform admin's access tokens in the live homeserver's database."""
    admin = f"@c3-admin:{tenant['server_name']}"
    query = "SELECT token FROM access_tokens WHERE user_id = {}"
    sqlite_file = platform.homeserver_dir(tenant["id"]) / "homeserver.db"
    if sqlite_file.exists():
        with sqlite3.connect(f"file:{sqlite_file}?mode=ro", uri=True) as db:
            rows = db.execute(query.format("?"), (admin,)).fetchall()
    else:
        name = tenant_databases.database_name_for(uuid.UUID(tenant["id"]))
        url = make_conninfo(platform.env["C3_TENANT_DATABASE_URL"], dbname=name)
        with psycopg.connect(url) as conn:
            rows = conn.execute(query.format("%s"), (admin,)).fetchall()
    return [str(token) for (token,) in rows]


def exported_database_text(unpacked: Path) -> bytes:
    """Every byte of the archive's database as something to search: the SQLite file itself,
    or the PostgreSQL dump's data as ``pg_restore`` writes it out."""
    sqlite_file = unpacked / "database" / "homeserver.db"
    if sqlite_file.exists():
        return sqlite_file.read_bytes()
    dump = unpacked / "database" / "homeserver.pgdump"
    return subprocess.run(
        ["pg_restore", "--file=-", str(dump)], capture_output=True, check=True
    ).stdout


def platform_logs(platform: RunningPlatform) -> str:
    files = [platform.log_path, *sorted((platform.data_dir / "logs").glob("*.log"))]
    return "\n".join(f.read_text(errors="replace") for f in files if f.is_file())


@dataclasses.dataclass(frozen=True)
class Exported:
    """A tenant filled through the proxy, exported, downloaded by its link and unpacked."""

    tenant: dict[str, Any]
    user: str
    token: str  # a session made before the export
    room_id: str
    mxc: str
    image: bytes
    export: dict[str, Any]
    unpacked: Path
    manifest: dict[str, Any]
    admin_tokens: list[str]  # the platform admin's, live when the export was made


def export_filled_tenant(
    platform: RunningPlatform,
    tenant: dict[str, Any],
    tmp_path: Path,
    *,
    bucket: S3Store | None = None,
) -> Exported:
    """Fill the (active) tenant's homeserver through the proxy, export it, download the
    archive through its signed link with no credentials, and unpack and check it. With
    ``bucket`` (the platform runs with C3_OBJECT_STORE_URL) the archive must be there, not
    in the data directory, and the link must redirect to its presigned URL."""
    user = platform.create_user(tenant["id"], "eve", PASSWORD)
    base = f"{platform.proxy_url}/t/{tenant['slug']}"
    signed_in = login(base, "eve")
    assert signed_in.status_code == 200, signed_in.text
    token = signed_in.json()["access_token"]
    room_id, mxc, image = fill_homeserver(base, token)

    with platform.api() as api:
        accepted = api.post(f"/v1/tenants/{tenant['id']}/export")
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["state"] == "pending"
        wait_operation(platform, accepted.headers["location"], timeout=120)
        export = api.get(f"/v1/tenants/{tenant['id']}/exports/{accepted.json()['id']}").json()
    assert export["state"] == "ready", export
    key = f"exports/{export['id']}.tar.gz"
    if bucket is None:
        assert (platform.data_dir / key).stat().st_mode & 0o777 == 0o600
    else:
        stored = bucket.stat(key)
        assert stored is not None and stored.size == export["size_bytes"]
        assert not (platform.data_dir / key).exists()
        assert list((platform.data_dir / "work").iterdir()) == []  # no local copy left

    # A plain HTTP client with no credentials, as a browser or curl would fetch it.
    download = httpx.get(export["download_url"], timeout=60, follow_redirects=True)
    assert download.status_code == 200, download.text
    if bucket is not None:  # through the API's link to the presigned URL of the bucket
        assert [r.status_code for r in download.history] == [307]
        assert "X-Amz-Signature" in download.url.params
        assert download.url.path.endswith(key)
    assert download.headers["content-type"] == "application/gzip"
    assert hashlib.sha256(download.content).hexdigest() == export["sha256"]
    assert len(download.content) == export["size_bytes"]
    archive = tmp_path / "export.tar.gz"
    archive.write_bytes(download.content)
    unpacked = tmp_path / "unpacked"
    manifest = extract(archive, unpacked)
    assert manifest["tenant_id"] == tenant["id"]
    assert manifest["server_name"] == tenant["server_name"]
    original_key = (platform.homeserver_dir(tenant["id"]) / "signing.key").read_text()
    assert (unpacked / "signing.key").read_text() == original_key

    # The platform's admin token is nowhere in the archive; the tenant user's session is.
    admin_tokens = live_admin_tokens(platform, tenant)
    assert admin_tokens  # the live homeserver keeps its admin session
    database = exported_database_text(unpacked)
    assert token.encode() in database
    assert [t for t in admin_tokens if t.encode() in database] == []
    assert manifest["scrubbed"]["platform_users"] == [f"@c3-admin:{tenant['server_name']}"]
    assert {"access_tokens", "devices", "users.password_hash"} <= set(
        manifest["scrubbed"]["tables"]
    )
    return Exported(
        tenant, user, token, room_id, mxc, image, export, unpacked, manifest, admin_tokens
    )


def assert_serves_the_export(restored: str, exported: Exported) -> None:
    """The restored homeserver serves the same user, with the same password; the session
    made before the export is still valid (access tokens live in the database); and the
    same room, messages and media bytes. The platform admin's token does not work there."""
    again = login(restored, "eve")
    assert again.status_code == 200, again.text
    assert again.json()["user_id"] == exported.user
    new_token = again.json()["access_token"]
    with matrix(restored, exported.token) as hs:
        assert hs.get("/_matrix/client/v3/account/whoami").json()["user_id"] == exported.user
    events = timeline(restored, new_token, exported.room_id)
    assert [e["content"]["body"] for e in events] == [*MESSAGES, "chart.png"]
    assert events[-1]["content"]["url"] == exported.mxc
    assert media(restored, new_token, exported.mxc) == exported.image
    for admin_token in exported.admin_tokens:  # the platform's access did not travel along
        with matrix(restored, admin_token) as hs:
            assert hs.get("/_matrix/client/v3/account/whoami").status_code == 401
