"""Files with secrets or tenant data are private from the moment they exist: created 0600 (not
written, then chmodded — readable by anyone in between), whatever the process's umask."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from c3.local_run import load_local_secrets
from platform_core.object_store import LocalStore
from platform_core.private_files import ensure_private_dir, write_private
from provisioner.backends.local import LocalBackend
from provisioner.exports import backup_sqlite
from provisioner.synapse_config import HomeserverSecrets, write_homeserver_files
from tests.provisioner.test_synapse_config import spec


@pytest.fixture
def chmods(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Under the loosest umask (0: new files 0666), every chmod of a file is recorded."""
    calls: list[str] = []
    real_chmod = os.chmod

    def chmod(path: object, mode: int, *args: object, **kwargs: object) -> None:
        if not os.path.isdir(path):  # type: ignore[arg-type]
            calls.append(str(path))
        real_chmod(path, mode, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "chmod", chmod)
    previous = os.umask(0)
    yield calls
    os.umask(previous)


def private(path: Path) -> bool:
    return path.stat().st_mode & 0o077 == 0


def test_write_private_creates_the_file_private_and_replaces_atomically(
    tmp_path: Path, chmods: list[str]
) -> None:
    target = tmp_path / "secret.json"
    target.write_text("old")
    target.chmod(0o644)
    chmods.clear()
    write_private(target, "new")
    assert target.read_text() == "new" and private(target)
    assert [p.name for p in tmp_path.iterdir()] == ["secret.json"]  # no temporary left
    assert chmods == []


def test_homeserver_config_and_signing_key_are_never_readable_by_others(
    tmp_path: Path, chmods: list[str]
) -> None:
    assert write_homeserver_files(spec(tmp_path), HomeserverSecrets.generate()) is True
    directory = tmp_path / "hs"
    for name in ("homeserver.yaml", "signing.key", "log.config"):
        assert private(directory / name), name
    assert private(directory) and private(directory / "media_store")
    assert chmods == []


def test_local_secrets_are_private_and_gain_a_redis_password(
    tmp_path: Path, chmods: list[str]
) -> None:
    data_dir = tmp_path / "c3"
    first = load_local_secrets(data_dir)
    assert set(first) == {"secret_key", "operator_token", "redis_password"}
    assert private(data_dir / "local-secrets.json") and private(data_dir)
    assert load_local_secrets(data_dir) == first  # kept across restarts
    # A file from before the embedded Redis had a password: the password is added.
    (data_dir / "local-secrets.json").unlink()
    write_private(
        data_dir / "local-secrets.json", json.dumps({"secret_key": "k", "operator_token": "t"})
    )
    upgraded = load_local_secrets(data_dir)
    assert upgraded["secret_key"] == "k" and upgraded["redis_password"]
    assert private(data_dir / "local-secrets.json")
    assert chmods == []


def test_archives_and_export_copies_are_private_from_creation(
    tmp_path: Path, chmods: list[str]
) -> None:
    backend = LocalBackend(tmp_path)
    directory = backend.tenant_dir("t-1")
    directory.mkdir(parents=True, mode=0o700)
    (directory / "homeserver.db").write_bytes(b"data")
    key = backend.archive("t-1", LocalStore(tmp_path))  # the data directory's store
    archive = tmp_path / (key or "")
    assert private(archive) and tarfile.open(archive).getnames()
    assert private(archive.parent)

    database = tmp_path / "live.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE t (x)")
    backup_sqlite(database, tmp_path / "copy.db")
    assert private(tmp_path / "copy.db")
    assert chmods == []


def test_an_existing_open_data_dir_is_tightened_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "c3"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    with caplog.at_level(logging.WARNING):
        ensure_private_dir(data_dir)
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert "restricted it to its owner" in caplog.text
    caplog.clear()
    ensure_private_dir(data_dir)  # already private: nothing to say
    assert caplog.text == ""
