"""A real S3-compatible server for the tests: moto's standalone server (``python -m
moto.server``) as its own process on a free loopback port, and buckets and settings for it."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from c3.local_run import free_port
from platform_core.object_store import S3Config, S3Store
from tests.helpers.platform import poll, stop_process

ACCESS_KEY_ID = "AKIAC3TESTOBJECTSTORE"
# Distinctive, so a test can look for it in every log and response.
SECRET_ACCESS_KEY = "c3-test-s3-secret-" + uuid.uuid4().hex


@dataclass(frozen=True)
class S3Server:
    url: str
    log: Path

    def bucket(self, prefix: str = "") -> S3Store:
        """A new, empty bucket on this server."""
        store = S3Store(self.config(f"c3-test-{uuid.uuid4().hex[:12]}", prefix=prefix))
        store.ensure_bucket()
        return store

    def config(self, bucket: str, *, prefix: str = "") -> S3Config:
        return S3Config(
            endpoint_url=self.url,
            bucket=bucket,
            access_key_id=ACCESS_KEY_ID,
            secret_access_key=SECRET_ACCESS_KEY,
            prefix=prefix,
        )

    def env(self, store: S3Store) -> dict[str, str]:
        """C3_* settings that point a platform at ``store``'s bucket."""
        return {
            "C3_OBJECT_STORE_URL": self.url,
            "C3_OBJECT_STORE_BUCKET": store.bucket,
            "C3_OBJECT_STORE_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "C3_OBJECT_STORE_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "C3_OBJECT_STORE_PREFIX": store.config.prefix,
        }


@contextmanager
def moto_server(directory: Path) -> Iterator[S3Server]:
    """moto's S3 server until the block ends."""
    port = free_port()
    log = directory / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"moto server exited: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{url}/moto-api/", timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    try:
        poll(up, timeout=60, what="moto's S3 server")
        yield S3Server(url, log)
    finally:
        stop_process(process, timeout=10)
