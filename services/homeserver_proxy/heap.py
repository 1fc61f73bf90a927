"""The proxy process's garbage collector, tuned once the proxy has started (docs/benchmarks.md,
"The hot path"). Only for ``c3 proxy``, a process of its own: an app embedded in another
process (the tests') leaves that process's collector alone."""

from __future__ import annotations

import gc

# The first generation's threshold once started (CPython's default: 700). A request allocates a
# few hundred tracked objects, most freed by reference counting; at 700, collections ran every
# few requests and promoted in-flight requests' objects to older generations, whose full
# collections then took ~30 ms each under load.
GC_GEN0_THRESHOLD = 20_000


def settle_heap() -> None:
    """Called once the proxy has started: what exists by then (modules, settings, the route
    table, the upstream session) lives as long as the process, so it is frozen out of every
    later collection, and short-lived request objects get a first generation large enough to
    die in."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, second, third)
