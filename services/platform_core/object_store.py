"""Where tenant exports, deletion archives and database dumps live: one small interface with two
real stores — the data directory (local runs, the default) and any S3-compatible object store
(``C3_OBJECT_STORE_URL``), so an archive one pod wrote is downloadable through every other.

Keys are ``/``-separated relative paths (the layout is the local data directory's, so a local
store holds its files exactly where earlier releases did)::

    exports/<export id>.tar.gz                     a tenant export (until its link expires)
    archive/<tenant id>-<UTC stamp>.tar.gz         a deleted tenant's homeserver data
    archive/<tenant id>-<UTC stamp>.pgdump         a deleted tenant's database dump

``C3_OBJECT_STORE_PREFIX`` puts every key of the S3 store under a prefix (one bucket shared by
several platforms). Files go in from a local path (S3: multipart above 64 MiB, through boto3's
managed transfer), come out as a stream, or — on S3 — as a presigned GET URL that needs no
credentials until it expires.
"""

from __future__ import annotations

import abc
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Literal, cast

from platform_core.errors import PermanentError, TemporaryError
from platform_core.private_files import create_private

if TYPE_CHECKING:
    from platform_core.settings import Settings

EXPORTS = "exports"
ARCHIVE = "archive"
# SigV4 presigned URLs live at most seven days.
MAX_PRESIGN_TTL_S = 7 * 24 * 3600
_CHUNK = 1024 * 1024
# boto3 switches to a multipart upload above this size, in parts of this size.
MULTIPART_THRESHOLD = 64 * 1024 * 1024


# Keys -------------------------------------------------------------------------------------


def export_key(export_id: uuid.UUID) -> str:
    return f"{EXPORTS}/{export_id}.tar.gz"


def archive_prefix(tenant_id: str) -> str:
    """Every deletion archive and dump of one tenant starts with this."""
    return f"{ARCHIVE}/{tenant_id}-"


def archive_key(tenant_id: str, suffix: str, *, at: datetime | None = None) -> str:
    """A deletion archive (``suffix`` ``.tar.gz``) or database dump (``.pgdump``), stamped in
    UTC: ``archive/<tenant id>-20261204T150000Z.tar.gz``."""
    stamp = (at or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{archive_prefix(tenant_id)}{stamp}{suffix}"


def check_key(key: str) -> str:
    """``key`` if it is a plain relative path (no ``..``, no empty or absolute parts)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a valid object key: {key!r}")
    return key


# The interface ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: datetime  # UTC


class ObjectStore(abc.ABC):
    """Files under keys. Every method is idempotent where it can be: deleting a missing key is
    not an error."""

    kind: str

    @abc.abstractmethod
    def put_stream(self, key: str, stream: IO[bytes]) -> StoredObject:
        """Store what ``stream`` yields until its end under ``key`` (replacing what was
        there). Readers see the old object or the complete new one, never a part."""

    def put_file(self, key: str, path: Path) -> StoredObject:
        """Store the file at ``path`` under ``key`` (see ``put_stream``)."""
        with open(path, "rb") as source:
            return self.put_stream(key, source)

    @abc.abstractmethod
    def open(self, key: str) -> IO[bytes]:
        """The object's bytes as a stream (the caller closes it); FileNotFoundError if absent."""

    @abc.abstractmethod
    def stat(self, key: str) -> StoredObject | None:
        """Size and modification time, or None when there is no such object."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object if it exists."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[StoredObject]:
        """Every object whose key starts with ``prefix`` (a plain string prefix), by key."""

    @abc.abstractmethod
    def download_url(self, key: str, ttl_s: int, filename: str) -> str | None:
        """A URL that downloads the object as ``filename`` without credentials for ``ttl_s``
        seconds, or None when this store has no URLs of its own (the caller streams
        ``open(key)`` instead)."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise PermanentError when the store cannot work at all (no such bucket, refused
        credentials), TemporaryError when it cannot be reached right now. For start-up."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (never the empty prefix); returns how many."""
        if not prefix:
            raise ValueError("refusing to delete every object of the store")
        found = self.list(prefix)
        for item in found:
            self.delete(item.key)
        return len(found)


# The data directory -----------------------------------------------------------------------


class LocalStore(ObjectStore):
    """Objects as files under a directory (the platform's data directory in local runs),
    private (0600 files, 0700 directories) from their creation."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def put_stream(self, key: str, stream: IO[bytes]) -> StoredObject:
        dest = self.path(key)
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            with os.fdopen(create_private(partial), "wb") as target:
                shutil.copyfileobj(stream, target, _CHUNK)
                target.flush()
                os.fsync(target.fileno())
            partial.replace(dest)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        found = self.stat(key)
        assert found is not None
        return found

    def open(self, key: str) -> IO[bytes]:
        return open(self.path(key), "rb")

    def stat(self, key: str) -> StoredObject | None:
        try:
            info = self.path(key).stat()
        except FileNotFoundError:
            return None
        return StoredObject(key, info.st_size, datetime.fromtimestamp(info.st_mtime, UTC))

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[StoredObject]:
        directory, _, start = prefix.rpartition("/")
        base = self.path(directory) if directory else self.root
        if not base.is_dir():
            return []
        found = []
        for path in sorted(base.rglob("*")):
            parts = path.relative_to(self.root).parts
            # Partial writes (and work directories of older releases) are hidden.
            if not path.is_file() or any(part.startswith(".") for part in parts):
                continue
            key = PurePosixPath(*parts).as_posix()
            if key.startswith(prefix):
                item = self.stat(key)
                if item is not None:
                    found.append(item)
        return found

    def download_url(self, key: str, ttl_s: int, filename: str) -> str | None:
        return None

    def check(self) -> None:
        return None  # the data directory is checked (and made private) by c3 itself


# S3 ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str
    bucket: str
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None  # repr=False below: never in a log line
    prefix: str = ""

    def __repr__(self) -> str:
        return (
            f"S3Config(endpoint_url={self.endpoint_url!r}, bucket={self.bucket!r}, "
            f"region={self.region!r}, prefix={self.prefix!r})"
        )


class S3Store(ObjectStore):
    """Objects in one bucket of an S3-compatible store (AWS S3, MinIO, Ceph RGW, moto)."""

    kind = "s3"

    def __init__(self, config: S3Config) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.config = config
        self.bucket = config.bucket
        self._prefix = f"{config.prefix.strip('/')}/" if config.prefix.strip("/") else ""
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            config=Config(
                signature_version="s3v4",
                # Path-style works with every S3-compatible server and needs no wildcard DNS.
                s3={"addressing_style": "path"},
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_THRESHOLD,
            use_threads=False,
        )

    def _full(self, key: str) -> str:
        return self._prefix + check_key(key)

    def _errors(self, what: str) -> Any:
        return _S3Errors(what, self.bucket)

    def put_stream(self, key: str, stream: IO[bytes]) -> StoredObject:
        with self._errors(f"uploading {key}"):
            self._client.upload_fileobj(stream, self.bucket, self._full(key), Config=self._transfer)
        found = self.stat(key)
        if found is None:
            raise TemporaryError(f"object store: {key} is missing right after its upload")
        return found

    def open(self, key: str) -> IO[bytes]:
        from botocore.exceptions import ClientError

        try:
            with self._errors(f"reading {key}"):
                body = self._client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        except ClientError as exc:
            raise FileNotFoundError(key) from exc
        return cast(IO[bytes], body)  # botocore's StreamingBody is an io.IOBase

    def stat(self, key: str) -> StoredObject | None:
        from botocore.exceptions import ClientError

        try:
            with self._errors(f"looking up {key}"):
                head = self._client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError:
            return None
        return StoredObject(key, int(head["ContentLength"]), _utc(head["LastModified"]))

    def delete(self, key: str) -> None:
        with self._errors(f"deleting {key}"):
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def list(self, prefix: str) -> list[StoredObject]:
        found = []
        paginator = self._client.get_paginator("list_objects_v2")
        with self._errors(f"listing {prefix}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._prefix + prefix):
                for item in page.get("Contents", []):
                    key = item["Key"][len(self._prefix) :]
                    found.append(StoredObject(key, int(item["Size"]), _utc(item["LastModified"])))
        return sorted(found, key=lambda item: item.key)

    def download_url(self, key: str, ttl_s: int, filename: str) -> str:
        ttl = max(1, min(int(ttl_s), MAX_PRESIGN_TTL_S))
        params = {
            "Bucket": self.bucket,
            "Key": self._full(key),
            "ResponseContentDisposition": f'attachment; filename="{_plain(filename)}"',
            "ResponseContentType": (
                "application/gzip" if filename.endswith(".gz") else "application/octet-stream"
            ),
            "ResponseCacheControl": "private, no-store",
        }
        url: str = self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl)
        return url

    def check(self) -> None:
        from botocore.exceptions import ClientError

        try:
            with self._errors("checking the bucket"):
                self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:  # HEAD answers a bare 404 for a missing bucket
            raise PermanentError(
                f"object store: bucket {self.bucket!r} does not exist at {self.config.endpoint_url}"
            ) from exc

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (tests and first runs; production buckets
        are usually made by whoever runs the store)."""
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            with self._errors("creating the bucket"):
                self._client.create_bucket(Bucket=self.bucket)


class _S3Errors:
    """Turns boto3's failures into the platform's error types: a store that cannot be reached
    or answers 5xx is temporary (the step retries); a refused request (403, no such bucket) is
    permanent. A missing key (404) is passed through as ClientError for the caller."""

    def __init__(self, what: str, bucket: str) -> None:
        self.what, self.bucket = what, bucket

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> Literal[False]:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code in ("404", "NoSuchKey", "NotFound"):
                return False
            if status >= 500 or code in ("SlowDown", "RequestTimeout"):
                raise TemporaryError(f"object store: {self.what} failed ({code})") from None
            raise PermanentError(
                f"object store: {self.what} in bucket {self.bucket!r} was refused ({code})"
            ) from None
        if isinstance(exc, BotoCoreError):
            raise TemporaryError(
                f"object store: {self.what} failed ({type(exc).__name__})"
            ) from None
        return False


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _plain(filename: str) -> str:
    """A filename safe inside a quoted Content-Disposition value."""
    return "".join(c for c in filename if c.isalnum() or c in "-_.") or "download"


# From settings ----------------------------------------------------------------------------


def from_settings(settings: Settings) -> ObjectStore:
    """The platform's store: S3 when C3_OBJECT_STORE_URL is set, else the data directory.
    One client per configuration and process (boto3 clients are thread-safe)."""
    if not settings.object_store_url:
        return _local(settings.data_path)
    assert settings.object_store_bucket  # settings validation requires it with a URL
    secret = settings.object_store_secret_access_key
    return _s3(
        S3Config(
            endpoint_url=settings.object_store_url,
            bucket=settings.object_store_bucket,
            region=settings.object_store_region,
            access_key_id=settings.object_store_access_key_id,
            secret_access_key=secret.get_secret_value() if secret is not None else None,
            prefix=settings.object_store_prefix,
        )
    )


@lru_cache(maxsize=8)
def _local(root: Path) -> LocalStore:
    return LocalStore(root)


@lru_cache(maxsize=8)
def _s3(config: S3Config) -> S3Store:
    return S3Store(config)
