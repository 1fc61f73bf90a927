"""Deleted tenants' archives: kept for the retention period, then purged; purge at once on
request. (Local backend, real files.)"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from provisioner.backends.local import LocalBackend


def test_archives_are_purged_after_retention_or_at_once(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    tenant, other = "t-1", "t-2"
    for name in (tenant, other):
        directory = backend.tenant_dir(name)
        directory.mkdir(parents=True)
        (directory / "homeserver.db").write_bytes(b"data")
        archive = Path(backend.archive(name) or "")
        assert archive.is_file() and not directory.exists()
    old = time.time() - 40 * 86400
    os.utime(next(backend.archive_root.glob(f"{tenant}-*")), (old, old))

    cutoff = datetime.now(UTC) - timedelta(days=30)
    assert backend.purge_archives(tenant, older_than=cutoff) == 1
    assert backend.purge_archives(other, older_than=cutoff) == 0  # still within retention
    assert backend.purge_archives(other) == 1  # ?purge=true
    assert backend.purge_archives(other) == 0  # idempotent
    assert list(backend.archive_root.iterdir()) == []
