"""Whether the machine the homeservers run on hands the memory they free back to its host.

A VM with a virtio-balloon device and free page reporting (Linux's ``page_reporting``) tells
its hypervisor about free blocks of at least ``2^page_reporting_order`` pages, and the host
drops them. The next write to such a page costs a fault in the host as well as in the guest,
and the guest's virtual CPU can run nothing else meanwhile. Sleeping homeservers churn memory
exactly this way: a homeserver that falls asleep frees its ~40 MiB, the next one woken writes
as much. Measured on such a VM (docs/benchmarks.md, "Free page reporting is the slow round"):
a page written for the first time after it was handed back 4.5–5.9 µs, with reporting off
1.5–1.9 µs; a burst of wakes beside 100 chatting clients used a quarter more CPU and its
wakes' p95 went from 0.23 s to 4.1 s.

Reporting is the host's setting for its guests, not the platform's; ``c3 up`` says when it is
on and docs/operations.md how to turn it off (``page_reporting.page_reporting_order`` above the
largest block the kernel keeps).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

PARAMETERS = Path("/sys/module/page_reporting/parameters")
BUDDYINFO = Path("/proc/buddyinfo")


@dataclass(frozen=True)
class PageReporting:
    # The smallest free block reported, as an order (2^order pages); None: the kernel has no
    # free page reporting (no balloon, not a VM, or built without it).
    order: int | None
    # The largest block order the kernel keeps (10 on x86-64): an ``order`` above it reports
    # nothing.
    largest_order: int | None
    # What has been handed back since boot, where the kernel counts it (some hosts' kernels
    # do; upstream's does not).
    reported_kib: int | None

    @property
    def on(self) -> bool:
        if self.order is None:
            return False
        return self.largest_order is None or self.order <= self.largest_order

    def brief(self) -> str:
        if self.order is None:
            return "none"
        if not self.on:
            return f"off (order {self.order}, above the largest block, {self.largest_order})"
        return f"on, free blocks of {4 << self.order} KiB and up go back to the host"


def _int(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return None


def page_reporting(parameters: Path = PARAMETERS, buddyinfo: Path = BUDDYINFO) -> PageReporting:
    largest = None
    with contextlib.suppress(OSError, IndexError):
        # "Node 0, zone DMA <free blocks of order 0> … <of the largest order>"
        columns = buddyinfo.read_text().split("\n", 1)[0].split()
        largest = len(columns) - 5 if len(columns) > 4 else None
    return PageReporting(
        order=_int(parameters / "page_reporting_order"),
        largest_order=largest,
        reported_kib=_int(parameters / "reported_kib"),
    )
