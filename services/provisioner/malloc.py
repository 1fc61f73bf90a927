"""Which allocator a tenant's Synapse runs with: Debian's jemalloc when it is installed.

Synapse under glibc's malloc fragments and keeps freed memory; with jemalloc preloaded it stays
smaller and its cache autotuning (``caches.cache_autotuning``) can work at all, since that reads
jemalloc's own statistics. Measured in docs/benchmarks.md ("Synapse's footprint").
"""

from __future__ import annotations

import platform
import sysconfig
from pathlib import Path

JEMALLOC_SONAME = "libjemalloc.so.2"
# LD_PRELOAD for a Debian-based image (Synapse's own ships libjemalloc2): the dynamic linker
# expands $LIB to the machine's multiarch directory (lib/x86_64-linux-gnu, lib/aarch64-linux-gnu),
# so one value serves every architecture a cluster's nodes have.
DEBIAN_JEMALLOC_PRELOAD = "/usr/$LIB/" + JEMALLOC_SONAME


def _library_dirs() -> list[Path]:
    """Where this machine's own architecture keeps shared libraries: Debian's multiarch
    directory (x86_64-linux-gnu, aarch64-linux-gnu, ...), then the generic ones."""
    triplets = [sysconfig.get_config_var("MULTIARCH") or "", f"{platform.machine()}-linux-gnu"]
    dirs = [Path("/usr/lib") / t for t in dict.fromkeys(t for t in triplets if t)]
    return [*dirs, Path("/usr/lib64"), Path("/usr/lib"), Path("/usr/local/lib")]


def jemalloc_path() -> Path | None:
    """The jemalloc library to preload into Synapse, or None when it is not installed."""
    for directory in _library_dirs():
        candidate = directory / JEMALLOC_SONAME
        if candidate.is_file():
            return candidate
    return None


def synapse_environment(base: dict[str, str], *, use_jemalloc: bool) -> dict[str, str]:
    """``base`` with jemalloc preloaded when wanted and installed (any LD_PRELOAD already
    there is kept after it); unchanged otherwise."""
    path = jemalloc_path() if use_jemalloc else None
    if path is None:
        return dict(base)
    preload = " ".join(p for p in (str(path), base.get("LD_PRELOAD", "")) if p)
    return {**base, "LD_PRELOAD": preload}
