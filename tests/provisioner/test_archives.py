"""Deleted tenants' archives: stored in the object store (the data directory, or S3 on moto's
real server), kept for the retention period, then purged; purge at once on request."""

from __future__ import annotations

import io
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from platform_core.object_store import LocalStore, ObjectStore, archive_key, archive_prefix
from provisioner.backends.local import LocalBackend
from tests.helpers.object_store import S3Server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path)
    server: S3Server = request.getfixturevalue("s3_server")
    return server.bucket()


def _homeserver(backend: LocalBackend, tenant: str) -> None:
    directory = backend.tenant_dir(tenant)
    directory.mkdir(parents=True)
    (directory / "homeserver.db").write_bytes(b"data of " + tenant.encode())


def test_a_deleted_tenants_data_lands_in_the_store_and_leaves_no_local_copy(
    tmp_path: Path, store: ObjectStore
) -> None:
    backend = LocalBackend(tmp_path)
    _homeserver(backend, "t-1")
    key = backend.archive("t-1", store)
    assert key is not None and key.startswith(archive_prefix("t-1")) and key.endswith(".tar.gz")
    assert not backend.tenant_dir("t-1").exists()
    with tarfile.open(fileobj=io.BytesIO(store.read_bytes(key)), mode="r:gz") as tar:
        member = tar.extractfile("t-1/homeserver.db")
        assert member is not None and member.read() == b"data of t-1"
    assert backend.archive("t-1", store) == key  # redelivered: nothing new
    assert [p for p in backend.work_root.iterdir()] == []  # the work copy is gone


def test_archives_are_purged_after_retention_or_at_once(tmp_path: Path, store: ObjectStore) -> None:
    backend = LocalBackend(tmp_path)
    for name in ("t-1", "t-2"):
        _homeserver(backend, name)
        backend.archive(name, store)
    # Retention counts from when the archive was stored: a cutoff in the future covers it.
    later = datetime.now(UTC) + timedelta(minutes=5)
    earlier = datetime.now(UTC) - timedelta(days=30)
    assert backend.purge_archives("t-1", store, older_than=later) == 1
    assert backend.purge_archives("t-2", store, older_than=earlier) == 0  # within retention
    assert backend.purge_archives("t-2", store) == 1  # ?purge=true
    assert backend.purge_archives("t-2", store) == 0  # idempotent
    assert store.list("archive/") == []


def test_a_database_dump_goes_with_the_tenants_data_archives(
    tmp_path: Path, store: ObjectStore
) -> None:
    """A deleted PostgreSQL tenant's dump (tenant_databases.retire) lies beside its data
    archive: retention and ?purge=true remove it with the rest, and only that tenant's."""
    backend = LocalBackend(tmp_path)
    source = tmp_path / "blob"
    source.write_bytes(b"PGDMP")
    at = datetime(2025, 1, 1, tzinfo=UTC)
    for name in ("t-1", "t-2"):
        store.put_file(archive_key(name, ".pgdump", at=at), source)
        store.put_file(archive_key(name, ".tar.gz", at=at), source)
    assert backend.purge_archives("t-1", store) == 2
    assert [item.key for item in store.list("archive/")] == [
        "archive/t-2-20250101T000000Z.pgdump",
        "archive/t-2-20250101T000000Z.tar.gz",
    ]
