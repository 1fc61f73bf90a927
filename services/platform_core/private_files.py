"""Files and directories only the platform's own user may read: tenant data, secrets, logs.

Private from their creation, never chmodded afterwards (a file written and then chmodded is
readable by anyone in between). The processes also run under ``umask 077`` (``c3``'s entry
points), so what Synapse, Redis or SQLite create is private as well; these helpers do not
depend on it.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077


def write_private(path: Path, content: str | bytes, *, mode: int = 0o600) -> None:
    """Write ``content`` to ``path`` atomically: a new file created ``mode`` (never wider),
    renamed over ``path`` once complete, so readers see the old file or the new one."""
    data = content.encode() if isinstance(content, str) else content
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_private(path: Path, *, mode: int = 0o600) -> int:
    """Create ``path`` (it must not exist) private; returns the open file descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) 0700; an existing one open to group or others is
    tightened to 0700, with a log line."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        path.chmod(0o700)
        log.warning(
            "%s was readable by other users (mode %o); restricted it to its owner (0700)",
            path,
            mode,
        )


def work_root(data_dir: Path) -> Path:
    """Where workers build archives and dumps before they go to the object store: on the data
    volume, not the system temp directory (a read-only root filesystem, a small ``/tmp``)."""
    return data_dir / "work"


@contextmanager
def private_temp_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new 0700 directory under ``parent`` (made private if missing), removed with all it
    holds when the block ends: where a worker builds an archive before uploading it. Kept on
    the data volume, not the system temp directory, because archives are as big as tenants."""
    ensure_private_dir(parent)
    with tempfile.TemporaryDirectory(dir=parent, prefix=prefix) as work:
        yield Path(work)
