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


def test_a_database_dump_goes_with_the_tenants_data_archives(tmp_path: Path) -> None:
    """A deleted PostgreSQL tenant's dump (tenant_databases.retire) lies beside its data
    archive: retention and ?purge=true remove it with the rest, and only that tenant's."""
    backend = LocalBackend(tmp_path)
    backend.archive_root.mkdir(parents=True)
    for name in ("t-1", "t-2"):
        (backend.archive_root / f"{name}-20250101T000000Z.pgdump").write_bytes(b"PGDMP")
        (backend.archive_root / f"{name}-20250101T000000Z.tar.gz").write_bytes(b"data")
    assert backend.purge_archives("t-1") == 2
    assert sorted(p.name for p in backend.archive_root.iterdir()) == [
        "t-2-20250101T000000Z.pgdump",
        "t-2-20250101T000000Z.tar.gz",
    ]
