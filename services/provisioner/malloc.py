"""Which allocator a tenant's Synapse runs with: glibc's malloc, or Debian's jemalloc preloaded
when C3_SYNAPSE_JEMALLOC is on and it is installed.

Measured (docs/benchmarks.md, "Synapse's footprint" and the twelfth session's density
section): a homeserver started on its own has 2–9 MiB more RSS with jemalloc; one forked from
the zygote has ~2.5 MiB less PSS and copies 6.6 % fewer of the zygote's pages, but Synapse
spends 4–7 % more CPU per message with it, and CPU is what limits wakes, so it is off by
default. It is the option for large, long-running tenants (where glibc's fragmentation shows)
and the only way a plan's cache autotuning (``synapse_cache_max_memory_mib``) works, since that
reads jemalloc's own statistics.
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


# jemalloc's options when we preload it: the best of the jemalloc variants measured — one arena
# (Synapse allocates from its reactor thread and a small database thread pool, jemalloc's
# default is 4 per CPU), no per-thread caches, freed pages returned within a second.
JEMALLOC_CONF = "narenas:1,tcache:false,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"


def jemalloc_path() -> Path | None:
    """The jemalloc library to preload into Synapse, or None when it is not installed."""
    for directory in _library_dirs():
        candidate = directory / JEMALLOC_SONAME
        if candidate.is_file():
            return candidate
    return None


def synapse_environment(base: dict[str, str], *, use_jemalloc: bool) -> dict[str, str]:
    """``base`` with jemalloc preloaded when wanted and installed (any LD_PRELOAD already
    there is kept after it, an operator's own MALLOC_CONF wins over ours); unchanged otherwise."""
    path = jemalloc_path() if use_jemalloc else None
    if path is None:
        return dict(base)
    preload = " ".join(p for p in (str(path), base.get("LD_PRELOAD", "")) if p)
    return {"MALLOC_CONF": JEMALLOC_CONF, **base, "LD_PRELOAD": preload}
