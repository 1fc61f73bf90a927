"""The proxy process's heap: its garbage collector, tuned once the proxy has started, and the
memory a crowd of long-polls used, given back to the system once they have ended
(docs/benchmarks.md, "The hot path" and "Parked long-polls"). Only for ``c3 proxy``, a process
of its own: an app embedded in another process (the tests') leaves that process alone."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

# The first generation's threshold once started (CPython's default: 700). A request allocates a
# few hundred tracked objects, most freed by reference counting; at 700, collections ran every
# few requests and promoted in-flight requests' objects to older generations, whose full
# collections then took ~30 ms each under load.
GC_GEN0_THRESHOLD = 20_000

# ``c3 proxy`` is to run with this in its environment (the chart sets it; ``c3 proxy`` warns
# without it): every Python object then lives in glibc's heap, whose free pages
# ``malloc_trim`` gives back wherever they are. pymalloc's own 1 MiB arenas go back only when
# wholly empty, and a few objects that outlive a crowd of polls (a token cache entry, a grown
# set) pin most of them: measured, 25 % came back with pymalloc, 92 % with malloc.
ALLOCATOR_ENV = ("PYTHONMALLOC", "malloc")

# Memory is given back once the open long-polls have fallen by at least this many, and by at
# least half, since the most seen (a crowd of ~1,000 parked polls is ~30 MiB)...
TRIM_MIN_FALL = 1000
# ... and stayed down this long: the upstream connections those polls held go back to the pool
# and are closed after its keep-alive (forwarding.UPSTREAM_KEEPALIVE_S, checked as often).
TRIM_SETTLE_S = 12.0
TRIM_CHECK_INTERVAL_S = 5.0
# ... and once more this long after: what a crowd's end sets off holds memory a while longer
# (metering's whoami of each first-seen token, up to 10 s each, on connections that then idle
# 5 s); measured, a trim during such a storm gave back 2 of 150 MiB.
TRIM_FOLLOW_UP_S = 60.0


def settle_heap() -> None:
    """Called once the proxy has started: what exists by then (modules, settings, the route
    table, the upstream session) lives as long as the process, so it is frozen out of every
    later collection, and short-lived request objects get a first generation large enough to
    die in."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, second, third)


def _glibc_malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)`` (None on another C library: musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


def resident_bytes() -> int:
    """This process's resident set (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


async def give_back_memory(malloc_trim: Callable[[], object] | None = None) -> None:
    """Free what only a collection frees (cycles: frames, futures, exceptions), then hand the
    allocator's free pages back to the system. The trim walks the whole heap (measured: 2.4 s
    for ~90 MiB on a loaded machine): it runs in a thread, without the GIL (ctypes lets it go),
    so requests go on meanwhile (their allocations mostly come from glibc's per-thread cache)."""
    gc.collect()
    if malloc_trim is not None:
        await asyncio.to_thread(malloc_trim)


class HeapTrimmer:
    """Decides when to give memory back: once the open long-polls (``open_long_polls()``)
    have fallen by a crowd since the most seen and stayed down ``settle_s``. Checked every
    few seconds off the hot path; a trim costs a full collection and a walk of the heap
    (milliseconds), so it is done once per crowd, not per poll."""

    def __init__(
        self,
        open_long_polls: Callable[[], int],
        *,
        min_fall: int = TRIM_MIN_FALL,
        settle_s: float = TRIM_SETTLE_S,
        follow_up_s: float = TRIM_FOLLOW_UP_S,
        release: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open_long_polls = open_long_polls
        self._min_fall = min_fall
        self._settle_s = settle_s
        self._follow_up_s = follow_up_s
        if release is None:
            malloc_trim = _glibc_malloc_trim()
            release = lambda: give_back_memory(malloc_trim)  # noqa: E731
        self._release = release
        self._clock = clock
        self._most = 0  # open long-polls at most since the last trim
        self._fell_at: float | None = None  # when they were first seen fallen by a crowd
        self._follow_up_at: float | None = None  # the second trim after a crowd's end
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> bool:
        """One look; True if memory was given back."""
        now_open = self._open_long_polls()
        if self._follow_up_at is not None and self._clock() >= self._follow_up_at:
            self._follow_up_at = None
            await self._give_back(f"{self._follow_up_s:.0f} s after long-polls ended", now_open)
            return True
        if now_open >= self._most:
            self._most = now_open
            self._fell_at = None
            return False
        fall = self._most - now_open
        if fall < self._min_fall or fall * 2 < self._most:
            self._fell_at = None
            return False
        now = self._clock()
        if self._fell_at is None:
            self._fell_at = now
            return False
        if now - self._fell_at < self._settle_s:
            return False
        self._most = now_open
        self._fell_at = None
        self._follow_up_at = now + self._follow_up_s
        await self._give_back(f"after {fall} long-polls ended", now_open)
        return True

    async def _give_back(self, why: str, now_open: int) -> None:
        before = resident_bytes()
        began = time.perf_counter()
        await self._release()
        log.info(
            "gave memory back %s (%d open): resident %.1f -> %.1f MiB in %.0f ms",
            why,
            now_open,
            before / 2**20,
            resident_bytes() / 2**20,
            (time.perf_counter() - began) * 1000,
        )

    def start(self, interval_s: float = TRIM_CHECK_INTERVAL_S) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(interval_s))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check()
            except Exception:
                log.exception("giving memory back failed")
