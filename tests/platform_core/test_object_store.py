"""Both object stores behind one contract: the data directory and S3 (moto's real server)."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from platform_core.errors import PermanentError
from platform_core.object_store import (
    MULTIPART_THRESHOLD,
    LocalStore,
    ObjectStore,
    S3Store,
    archive_key,
    archive_prefix,
    check_key,
    export_key,
    from_settings,
)
from platform_core.settings import Settings
from tests.helpers.object_store import S3Server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "data")
    server: S3Server = request.getfixturevalue("s3_server")
    return server.bucket(prefix="platform-a")


def _file(directory: Path, data: bytes) -> Path:
    path = directory / f"upload-{uuid.uuid4().hex[:6]}"
    path.write_bytes(data)
    return path


def test_a_file_put_under_a_key_reads_back_with_its_size(store: ObjectStore, tmp_path: Path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    key = export_key(uuid.uuid4())
    stored = store.put_file(key, _file(tmp_path, data))
    assert (stored.key, stored.size) == (key, len(data))
    assert abs(stored.modified - datetime.now(UTC)) < timedelta(minutes=5)
    assert store.read_bytes(key) == data
    assert store.exists(key)
    assert store.stat(key) == stored


def test_a_stream_is_stored_until_its_end(store: ObjectStore):
    data = os.urandom(1024 * 1024 + 3)
    stored = store.put_stream("archive/t-1-20260101T000000Z.pgdump", io.BytesIO(data))
    assert stored.size == len(data)
    with store.open(stored.key) as stream:
        assert stream.read(10) == data[:10]
        assert stream.read() == data[10:]


def test_putting_again_replaces_the_object(store: ObjectStore, tmp_path: Path):
    key = "exports/same.tar.gz"
    store.put_file(key, _file(tmp_path, b"first"))
    store.put_file(key, _file(tmp_path, b"second"))
    assert store.read_bytes(key) == b"second"
    assert [item.key for item in store.list("exports/")] == [key]


def test_a_missing_key_is_absent_not_an_error(store: ObjectStore):
    assert store.stat("exports/none.tar.gz") is None
    assert not store.exists("exports/none.tar.gz")
    with pytest.raises(FileNotFoundError):
        store.open("exports/none.tar.gz")
    store.delete("exports/none.tar.gz")  # idempotent


def test_list_and_delete_by_prefix_touch_only_that_tenant(store: ObjectStore, tmp_path: Path):
    one, other = str(uuid.uuid4()), str(uuid.uuid4())
    at = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)
    keys = [
        archive_key(one, ".tar.gz", at=at),
        archive_key(one, ".pgdump", at=at),
        archive_key(other, ".tar.gz", at=at),
    ]
    for key in keys:
        store.put_file(key, _file(tmp_path, key.encode()))
    assert keys[0] == f"archive/{one}-20261204T150000Z.tar.gz"
    assert [item.key for item in store.list(archive_prefix(one))] == sorted(keys[:2])
    assert store.delete_prefix(archive_prefix(one)) == 2
    assert store.list(archive_prefix(one)) == []
    assert [item.key for item in store.list("archive/")] == [keys[2]]
    with pytest.raises(ValueError):
        store.delete_prefix("")


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "exports/../../x", "a//b", "./a"])
def test_keys_that_could_escape_are_refused(store: ObjectStore, bad: str):
    with pytest.raises(ValueError):
        check_key(bad)
    with pytest.raises(ValueError):
        store.stat(bad)


def test_s3_download_url_is_presigned_and_serves_the_bytes(s3_server: S3Server, tmp_path: Path):
    store = s3_server.bucket()
    data = os.urandom(200_000)
    store.put_file("exports/x.tar.gz", _file(tmp_path, data))
    url = store.download_url("exports/x.tar.gz", 600, "c3-export-x.tar.gz")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
    got = httpx.get(url, timeout=30)  # no credentials: the URL is the authorisation
    assert got.status_code == 200
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(data).digest()
    assert 'filename="c3-export-x.tar.gz"' in got.headers["content-disposition"]
    # (moto checks neither signatures nor expiry unless its IAM emulation is on: the API's
    # own link, which redirects here, is what answers 410 once the export expired.)


def test_the_local_store_has_no_urls_of_its_own(tmp_path: Path):
    assert LocalStore(tmp_path).download_url("exports/x.tar.gz", 600, "x") is None


def test_local_objects_are_private_files_where_the_data_dir_kept_them(tmp_path: Path):
    store = LocalStore(tmp_path)
    export_id = uuid.uuid4()
    store.put_file(export_key(export_id), _file(tmp_path, b"archive"))
    path = tmp_path / "exports" / f"{export_id}.tar.gz"
    assert path.read_bytes() == b"archive"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "exports").stat().st_mode & 0o777 == 0o700


def test_a_large_file_goes_up_in_parts(s3_server: S3Server, tmp_path: Path):
    store = s3_server.bucket()
    path = tmp_path / "big"
    with open(path, "wb") as handle:  # sparse: cheap to write, big enough for two parts
        handle.truncate(MULTIPART_THRESHOLD + 1024)
    store.put_file("archive/big.tar.gz", path)
    head = store._client.head_object(Bucket=store.bucket, Key="archive/big.tar.gz")
    assert head["ContentLength"] == MULTIPART_THRESHOLD + 1024
    assert head["ETag"].strip('"').endswith("-2")  # the ETag of a two-part upload


def test_the_prefix_keeps_platforms_sharing_a_bucket_apart(s3_server: S3Server, tmp_path: Path):
    a = s3_server.bucket(prefix="platform-a")
    b = S3Store(s3_server.config(a.bucket, prefix="platform-b"))
    a.put_file("exports/1.tar.gz", _file(tmp_path, b"a"))
    assert b.list("exports/") == []
    assert not b.exists("exports/1.tar.gz")
    raw = a._client.list_objects_v2(Bucket=a.bucket)["Contents"]
    assert [item["Key"] for item in raw] == ["platform-a/exports/1.tar.gz"]


def test_a_bucket_that_does_not_exist_is_a_permanent_error(s3_server: S3Server, tmp_path: Path):
    store = S3Store(s3_server.config("no-such-bucket-" + uuid.uuid4().hex[:8]))
    with pytest.raises(PermanentError, match="no-such-bucket"):
        store.put_file("exports/1.tar.gz", _file(tmp_path, b"x"))


def test_settings_choose_the_store(s3_server: S3Server, tmp_path: Path):
    make: Callable[..., Settings] = Settings
    local = from_settings(make(data_dir=tmp_path))
    assert isinstance(local, LocalStore) and local.root == tmp_path.resolve()
    bucket = s3_server.bucket()
    s3 = from_settings(
        make(
            data_dir=tmp_path,
            object_store_url=s3_server.url,
            object_store_bucket=bucket.bucket,
            object_store_access_key_id="AKIAC3TESTOBJECTSTORE",
            object_store_secret_access_key=bucket.config.secret_access_key,
        )
    )
    assert isinstance(s3, S3Store) and s3.bucket == bucket.bucket
    assert bucket.config.secret_access_key not in repr(s3.config)


def test_a_missing_bucket_stops_the_api_and_worker_at_start(s3_server: S3Server, tmp_path: Path):
    """`c3 worker` (and `c3 api`) check the store before serving: a bucket that does not
    exist is a clear error naming it, and the process exits 2 without serving."""
    import subprocess
    import sys

    missing = "no-such-bucket-" + uuid.uuid4().hex[:8]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("C3_")},
        **s3_server.env(S3Store(s3_server.config(missing))),
        "C3_DATA_DIR": str(tmp_path),
    }
    from platform_core.migrate import upgrade

    upgrade(f"sqlite:///{tmp_path / 'platform.db'}")
    done = subprocess.run(
        [sys.executable, "-m", "c3", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert missing in done.stderr and "does not exist" in done.stderr
    assert s3_server.env(S3Store(s3_server.config(missing)))[
        "C3_OBJECT_STORE_SECRET_ACCESS_KEY"
    ] not in (done.stderr + done.stdout)


def test_local_partial_writes_are_not_objects(tmp_path: Path):
    store = LocalStore(tmp_path)
    (tmp_path / "exports" / ".work-old").mkdir(parents=True)
    (tmp_path / "exports" / ".work-old" / "homeserver.db").write_bytes(b"x")
    (tmp_path / "exports" / ".1.tar.gz.ab12cd34.partial").write_bytes(b"half")
    store.put_file("exports/1.tar.gz", _file(tmp_path, b"whole"))
    assert [item.key for item in store.list("exports/")] == ["exports/1.tar.gz"]
