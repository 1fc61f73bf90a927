"""Density benchmark: how many tenants with a real Synapse fit on this machine, and what their
clients see, with homeservers that sleep when idle and without (issue 16, "Density").

One run:

1. raises this process's file limit (``RLIMIT_NOFILE``, inherited by the platform it starts:
   the proxy holds connections to every awake homeserver), starts the platform (``c3 up``
   through ``benchmarks.harness``) in a temporary data directory (the caller's ``C3_*`` settings
   pass through; nothing set: SQLite platform database, embedded Redis, the local backend,
   SQLite per tenant) and creates a plan ``density``; in the default (sleep) mode its limits
   carry ``idle_after_seconds`` (``--idle-after``), which turns sleeping on; ``--no-sleep``
   leaves it out (always on). ``c3 up`` runs one worker of 2 processes and has no setting for
   more; ``--extra-worker-concurrency N`` starts one more ``c3 worker --concurrency N`` beside
   it, in the environment ``c3 up`` gave its own (same broker, database, data directory), and
   stops it before the platform;
2. provisions ``--tenants`` tenants on that plan, ``--parallel`` at a time, each in a thread of
   its own: ``POST /v1/tenants``, then, once active, two users (tenant API), both signed in
   through the proxy (``/t/<slug>``), a room the first creates and the second joins. A progress
   line every ``--progress-every`` tenants gives the rate and the ETA. ``--no-sleep`` stops
   early when the next tenant would not fit in ``--memory-budget-gib`` (all homeservers' plus
   the platform's RSS, one more homeserver estimated at the largest seen), or when the machine's
   available memory would drop below 1 GiB: "as many as fit";
3. sleep mode: waits until the tenants show ``homeserver.state == "asleep"`` in the API (the
   sleep contract), at most ``--idle-after`` + 120 s, and says how many did;
4. the workload: ``--rounds`` rounds of ``--round-seconds``; each round a rotating
   ``--active-share`` of the tenants is active (the next slice each round, so in sleep mode
   each was asleep). Their users **arrive spread over** ``--arrival-spread`` (seconds, or
   ``N%`` of the round; default the first half of it; ``0``: all at the same instant, the old
   behaviour), evenly spaced; at its arrival a tenant's state is read from the API, then its two
   clients both start with a ``/sync`` at once — the **wake latency** is from that first
   request to the tenant's first answer (a 503 with Retry-After is retried, not an answer) —
   then each sends a message and syncs every
   ``--interval`` seconds until the round ends; finally each syncs until it has seen every
   message its peer sent (at most 15 s). Clients behave as Matrix clients do: a ``503`` with
   ``Retry-After`` is retried after that many seconds (the same transaction id for a send);
   each active tenant's clients have a connection pool of their own (one pool for all cost
   this script half a core of the two); each round's line says how much CPU the script used;
5. heal: ``--heal-samples`` times during the workload (spread over the rounds), an active,
   awake tenant's homeserver is killed (``SIGKILL``, its pid from the local backend's pid file)
   a moment after its first answer; a probe of that tenant (``whoami`` as its first user, riding
   out ``503`` + ``Retry-After``) measures kill → first ``200`` through the proxy, while its two
   clients go on chatting;
6. counted: every send's latency, every expected ``503`` with ``Retry-After`` (apart: during a
   heal, elsewhere), every other 5xx answer and every request that got no answer (connection
   error, timeout) — both apart for heal windows — and every message sent (200) that the peer
   never saw ("lost");
7. memory: every ``--sample-every`` seconds during the workload and at the end of each round,
   the RSS and PSS (``/proc/<pid>/smaps_rollup``) of every tenant homeserver process and of the
   platform's processes (``c3 up`` and its children, and the extra worker), and how much the
   machine's memory in use (``total - available``) rose since before the platform started;
   with each sample, the CPU time of every process seen, so each round's line says how many
   cores went to the homeservers, the proxy, the API, each worker, beat, Redis, the zygote and
   PostgreSQL, and the machine's own split from ``/proc/stat`` (user, system, iowait, **steal**:
   time the hypervisor gave another guest), then a timeline, one entry per sample, of busy
   cores, the homeservers' share of them and the dirty pages not yet written back: when in a
   round the CPU ran short, and why; with it the machine's page faults a second (before the
   platform starts, the script measures what one costs: the µs per page a process writes for
   the first time, ``first_touch_us_per_page`` in the results, and whether the VM hands memory
   its processes free back to its host, ``PageReporting``; each round's line says how much it
   handed back, where the kernel counts it); and the median first answer
   of the tenants arriving in each fifth of the arrival window, where a queue shows as a row
   that rises from one fifth to the next;
8. prints a table, writes ``benchmarks/results/density-<mode>-<UTC stamp>.json``, stops the
   platform (also on failure or Ctrl-C), which stops every homeserver.

Usage (from the repository root)::

    .venv/bin/python benchmarks/density_bench.py --tenants 1000            # sleeping on
    .venv/bin/python benchmarks/density_bench.py --no-sleep --tenants 100 --memory-budget-gib 8
    .venv/bin/python benchmarks/density_bench.py --tenants 20 --idle-after 20 --rounds 3 \
        --round-seconds 20                                                 # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import mmap
import os
import platform as host_platform
import re
import resource
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import running_platform, stop_on_sigterm, write_results  # noqa: E402
from provisioner.backends.zygote import forked_in  # noqa: E402
from tests.helpers.platform import RunningPlatform  # noqa: E402

BASE_DOMAIN = "c3.bench"
PLAN = "density"
PROVISION_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 60.0
# Each active tenant's clients: a small pool of their own; one TLS context for all (the
# platform is plain HTTP on loopback here; a context per pool would load the CA store each).
CLIENT_LIMITS = httpx.Limits(max_connections=8, max_keepalive_connections=4)
CLIENT_TLS = ssl.create_default_context()


def client_pool() -> httpx.AsyncClient:
    """The connections of one active tenant's two clients."""
    return httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=CLIENT_LIMITS, verify=CLIENT_TLS)


CATCH_UP_S = 15.0
HEAL_TIMEOUT_S = 120.0
RETRY_AFTER_CAP_S = 5.0
FILE_LIMIT = 65_536
MIN_AVAILABLE_BYTES = 1024**3
MIB = 1024 * 1024
# Each sync returns up to this many timeline events per room: nothing a peer sent is skipped.
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 200}}})


# Processes and memory ---------------------------------------------------------------------

EXTRA_WORKERS: list[int] = []  # pids of workers this script started beside c3 up's


def raise_file_limit() -> int:
    """As many open files as allowed (up to FILE_LIMIT); the platform started later inherits
    it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (FILE_LIMIT, hard):
        if wanted <= soft:
            return soft
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
            return wanted
        except (ValueError, OSError):
            continue
    return soft


@contextmanager
def extra_worker(running: RunningPlatform, concurrency: int) -> Iterator[None]:
    """One more ``c3 worker --concurrency N`` beside ``c3 up``'s, in the environment ``c3 up``
    gave its own worker (so the embedded Redis and the secrets it generated are the same);
    stopped (SIGINT, as ``c3 up`` stops its children) when the block ends."""
    if concurrency <= 0:
        yield
        return
    env = None
    for child in psutil.Process(running.process.pid).children():
        if child.cmdline()[-2:] == ["c3", "worker"]:
            env = child.environ()
    if env is None:
        raise RuntimeError("c3 up runs no worker to take the environment from")
    log = open(running.data_dir / "logs" / "extra-worker.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "c3", "worker", f"--concurrency={concurrency}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    EXTRA_WORKERS.append(process.pid)
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        EXTRA_WORKERS.remove(process.pid)


def rss_pss(pid: int) -> tuple[int, int]:
    """Bytes of RSS and PSS of one process; (0, 0) once it is gone."""
    rss = pss = 0
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0, 0
    for line in lines:
        if line.startswith("Rss:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("Pss:"):
            pss = int(line.split()[1]) * 1024
    return rss, pss


def tenant_homeserver_pid(running: RunningPlatform, tenant_id: str) -> int | None:
    """The live homeserver of one tenant: the pid in the local backend's pid file
    (``<data dir>/homeservers/<tenant id>/c3-homeserver.pid``), if that process runs and is
    the tenant's (its command line names the tenant's directory) or the platform's (a
    descendant of ``c3 up``: a homeserver forked from a pre-imported parent keeps the parent's
    command line) — a recycled pid is neither."""
    directory = running.data_dir / "homeservers" / tenant_id
    try:
        pid = int((directory / "c3-homeserver.pid").read_text().strip())
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if any(str(directory) in arg for arg in process.cmdline()):
            return pid
        if forked_in(pid, directory):  # forked by the Synapse zygote
            return pid
        if running.process.pid in (parent.pid for parent in process.parents()):
            return pid
    except (OSError, ValueError, psutil.Error):
        return None
    return None


def homeserver_pids(running: RunningPlatform) -> dict[int, str | None]:
    """Every running tenant homeserver of this platform, with its tenant's id: those the pid
    files name, and any Synapse whose command line names a config under the data directory
    (tenant unknown)."""
    root = running.data_dir / "homeservers"
    found: dict[int, str | None] = {}
    for directory in root.iterdir() if root.is_dir() else ():
        pid = tenant_homeserver_pid(running, directory.name)
        if pid is not None:
            found[pid] = directory.name
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "synapse.app.homeserver" in cmdline and any(a.startswith(str(root)) for a in cmdline):
            found.setdefault(proc.pid, None)
    return dict(sorted(found.items()))


def platform_pids(running: RunningPlatform, exclude: set[int]) -> list[int]:
    """``c3 up`` and its descendants (API, proxy, worker, beat, Redis) and the extra worker's
    tree, not homeservers."""
    tree: list[psutil.Process] = []
    zygote = running.data_dir / "homeservers" / ".zygote" / "zygote.pid"
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        # The Synapse zygote: started by the worker, re-parented away like the homeservers.
        tree.append(psutil.Process(int(zygote.read_text().strip())))
    for pid in (running.process.pid, *EXTRA_WORKERS):
        try:
            root = psutil.Process(pid)
            tree += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return [p.pid for p in tree if p.pid not in exclude]


def machine_used() -> int:
    """The machine's memory in use (total - available: page cache the kernel can reclaim is not
    counted). The platform's share is its rise from before the platform started: the one total
    that counts a page shared by many processes once."""
    memory = psutil.virtual_memory()
    return int(memory.total - memory.available)


MACHINE_BEFORE: list[int] = []  # machine_used() before the platform started


def memory_sample(running: RunningPlatform, cpu: CpuAccount | None = None) -> dict[str, Any]:
    homeservers = homeserver_pids(running)
    platform = platform_pids(running, set(homeservers))
    busy = None
    if cpu is not None:
        cpu.observe(cpu_parts(running, homeservers, platform))
        busy = cpu.busy_since_last()
    hs = [rss_pss(pid) for pid in homeservers]
    pf = [rss_pss(pid) for pid in platform]
    return {
        "at": time.time(),
        "homeservers_running": len(homeservers),
        "homeservers_rss": sum(r for r, _ in hs),
        "homeservers_pss": sum(p for _, p in hs),
        "largest_homeserver_rss": max((r for r, _ in hs), default=0),
        "platform_rss": sum(r for r, _ in pf),
        "platform_pss": sum(p for _, p in pf),
        "available": psutil.virtual_memory().available,
        "machine_used_rise": machine_used() - MACHINE_BEFORE[0] if MACHINE_BEFORE else None,
        "cpu_busy": busy,
    }


def _machine_ticks() -> dict[str, int]:
    """The machine's CPU time since boot in clock ticks, from /proc/stat's first line."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return dict(zip(names, (int(f) for f in fields), strict=False))


def _machine_cores(before: dict[str, int], seconds: float) -> dict[str, float]:
    """Cores the machine spent in each ``/proc/stat`` state since ``before``, over ``seconds``."""
    ticks = _machine_ticks()
    per_second = max(seconds, 1e-9) * os.sysconf("SC_CLK_TCK")
    return {k: (ticks[k] - before[k]) / per_second for k in ticks}


def _page_faults() -> int:
    """Page faults the machine has taken since boot (``pgfault`` in /proc/vmstat)."""
    for line in Path("/proc/vmstat").read_text().splitlines():
        if line.startswith("pgfault "):
            return int(line.split()[1])
    return 0


def first_touch_us(mib: int = 256) -> float:
    """Microseconds per page this machine takes when a process writes a page for the first
    time: an anonymous mapping of ``mib`` MiB written one byte a page, less the same loop over
    the same pages once more (this loop's own cost, no faults); every page a woken homeserver
    dirties (~10,000 to its first answer) pays it. It cannot tell whether the VM hands freed
    memory back to its host: 2.6–3.3 µs with free page reporting on and off alike, where a C
    loop over memory that had gone back took 4.5–5.9 µs against 1.5–1.9 (docs/benchmarks.md,
    thirteenth session); ``page_reporting`` says which."""
    size = mib * MIB
    took = []
    with mmap.mmap(-1, size) as area:
        for _ in range(2):  # the first pass faults every page in, the second none
            started = time.perf_counter()
            for offset in range(0, size, mmap.PAGESIZE):
                area[offset] = 1
            took.append(time.perf_counter() - started)
    return (took[0] - took[1]) / (size // mmap.PAGESIZE) * 1e6


PAGE_REPORTING = Path("/sys/module/page_reporting/parameters")


@dataclass(frozen=True)
class PageReporting:
    """Whether this VM hands memory its processes free back to its host (Linux's free page
    reporting, with a virtio-balloon device): ``order``, the smallest free block reported
    (2^order pages; None: the kernel cannot report); ``largest_order``, the largest block the
    kernel keeps (an ``order`` above it reports nothing); ``reported_kib``, what went back
    since boot, where the kernel counts it (this VM kind's does, upstream's does not). A page
    that went back costs a fault in the host as well when it is next written (4.5–5.9 µs a
    page here against 1.5–1.9 µs with reporting off); whether that shows in a run is what the
    per-round line is for (docs/benchmarks.md, thirteenth session: not in the runs so far)."""

    order: int | None
    largest_order: int | None
    reported_kib: int | None

    def brief(self) -> str:
        if self.order is None:
            return "none"
        if self.largest_order is not None and self.order > self.largest_order:
            return f"off (order {self.order}, above the largest block, {self.largest_order})"
        return f"on, free blocks of {4 << self.order} KiB and up go back to the host"


def _int_in(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return None


def page_reporting() -> PageReporting:
    largest = None
    with contextlib.suppress(OSError):
        # "Node 0, zone DMA <free blocks of order 0> … <of the largest order>"
        columns = Path("/proc/buddyinfo").read_text().split("\n", 1)[0].split()
        largest = len(columns) - 5 if len(columns) > 4 else None
    return PageReporting(
        order=_int_in(PAGE_REPORTING / "page_reporting_order"),
        largest_order=largest,
        reported_kib=_int_in(PAGE_REPORTING / "reported_kib"),
    )


def _dirty_mib() -> int:
    """Page cache waiting to be written back (Dirty + Writeback in /proc/meminfo)."""
    kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(("Dirty:", "Writeback:")):
            kib += int(line.split()[1])
    return kib // 1024


def component(pid: int, zygote: int | None) -> str:
    """Which part of the platform ``pid`` is, by its command line (forked pool processes keep
    their parent's): ``c3 <command>``'s children, Redis, the zygote, PostgreSQL."""
    if pid == zygote:
        return "zygote"
    try:
        process = psutil.Process(pid)
        cmdline = process.cmdline()
        name = process.name()
    except psutil.Error:
        return "other"
    if "redis-server" in name or (cmdline and "redis-server" in cmdline[0]):
        return "redis"
    if name.startswith("postgres"):
        return "postgres"
    if "c3" in cmdline:
        args = cmdline[cmdline.index("c3") + 1 :]
        if args[:1] == ["worker"]:
            return "wake-lane" if "wake" in args else "worker"
        if args[:1] in (["proxy"], ["api"], ["beat"]):
            return args[0]
    return "other"


class CpuAccount:
    """Cores each component used over a round: the CPU time (user + system) of every process
    seen at a sample, from its first sample in the round (from zero if it started during the
    round) to its last; a process that exits between samples loses its last few seconds."""

    def __init__(self) -> None:
        self.started = time.time()
        self.ticks = _machine_ticks()
        self.seen: dict[tuple[int, float], list[Any]] = {}  # (pid, start) → [part, base, last]
        self._last: tuple[float, dict[str, int], Counter[str], int] = (
            self.started,
            self.ticks,
            Counter(),
            _page_faults(),
        )

    def busy_since_last(self) -> dict[str, float]:
        """Cores busy since the last call (the first: since the round began): the machine's
        (all but idle and iowait), its steal, and the homeservers' — a 5 s timeline that
        shows when in a round the CPU ran short."""
        now = time.time()
        then, before, hs_before, faults_before = self._last
        hs = Counter[str]()
        for part, base, last in self.seen.values():
            if part.startswith("homeservers"):
                hs[part] += last - base
        faults = _page_faults()
        self._last = (now, _machine_ticks(), hs, faults)
        took = max(now - then, 1e-9)
        machine = _machine_cores(before, took)
        return {
            "at": round(now - self.started, 1),
            "dirty_mib": _dirty_mib(),
            "busy": round(sum(v for k, v in machine.items() if k not in ("idle", "iowait")), 2),
            "steal": round(machine.get("steal", 0), 2),
            "homeservers": round((hs.total() - hs_before.total()) / took, 2),
            "this_round": round((hs[HS_THIS] - hs_before[HS_THIS]) / took, 2),
            "last_round": round((hs[HS_LAST] - hs_before[HS_LAST]) / took, 2),
            "faults_per_s": round((faults - faults_before) / took),
        }

    def observe(self, parts: dict[int, str]) -> None:
        for pid, part in parts.items():
            try:
                process = psutil.Process(pid)
                times = process.cpu_times()
                key = (pid, process.create_time())
            except psutil.Error:
                continue
            used = times.user + times.system
            if key in self.seen:
                self.seen[key][2] = used
            else:
                self.seen[key] = [part, 0.0 if key[1] >= self.started else used, used]

    def cores(self) -> dict[str, float]:
        took = max(time.time() - self.started, 1e-9)
        used: Counter[str] = Counter()
        for part, base, last in self.seen.values():
            used[part] += last - base
        machine = _machine_cores(self.ticks, took)
        return {k: round(v / took, 3) for k, v in sorted(used.items())} | {
            f"machine_{k}": round(v, 3) for k, v in machine.items()
        }


# Tenant id → which homeservers a round's CPU goes to: those it woke, those the round before
# woke (awake until they have idled ``--idle-after``), and every other (the rest).
HS_THIS, HS_LAST = "homeservers this round", "homeservers last round"
ROUND_GROUPS: dict[str, str] = {}


def cpu_parts(
    running: RunningPlatform, homeservers: dict[int, str | None], platform: list[int]
) -> dict[int, str]:
    zygote = None
    with contextlib.suppress(OSError, ValueError):
        path = running.data_dir / "homeservers" / ".zygote" / "zygote.pid"
        zygote = int(path.read_text().strip())
    parts = {
        pid: ROUND_GROUPS.get(tenant or "", "homeservers") for pid, tenant in homeservers.items()
    }
    parts |= {pid: component(pid, zygote) for pid in platform}
    for proc in psutil.process_iter(["name"]):
        if (proc.info["name"] or "").startswith("postgres"):
            parts[proc.pid] = "postgres"
    return parts


def cpu_brief(cores: dict[str, float]) -> str:
    parts = ", ".join(f"{k} {v:.2f}" for k, v in cores.items() if not k.startswith("machine_"))
    m = {k.removeprefix("machine_"): v for k, v in cores.items() if k.startswith("machine_")}
    return (
        f"{parts}; machine user {m.get('user', 0) + m.get('nice', 0):.2f}, system "
        f"{m.get('system', 0) + m.get('softirq', 0) + m.get('irq', 0):.2f}, iowait "
        f"{m.get('iowait', 0):.2f}, steal {m.get('steal', 0):.2f}, idle {m.get('idle', 0):.2f}"
    )


# The platform's own account of each wake, from its logs: the proxy's "asked for a wake of
# tenant <id>" and the worker's (or wake lane's) "tenant <id>: homeserver woken in <s> s
# (lease .., read .., render .., start .., healthy .., published ..)", logged when it ends.
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+ (.*)$")
_ASKED = re.compile(r"asked for a wake of tenant (\S+)")
_WOKEN = re.compile(r"tenant (\S+): homeserver woken in ([\d.]+) s \((.*)\)")


def _log_lines(path: Path) -> Iterator[tuple[float, str]]:
    """(UTC epoch, message) of each line of one of the platform's logs."""
    with contextlib.suppress(OSError), path.open(errors="replace") as lines:
        for line in lines:
            found = _LOG_LINE.match(line)
            if found:
                at = datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
                yield at.timestamp(), found[2]


def logged_wakes(running: RunningPlatform, since: float, until: float) -> list[dict[str, Any]]:
    """The wakes the worker logged as done between ``since`` and ``until`` (epoch seconds):
    each one's phases in seconds, and ``queue`` (the proxy's ask → the task starting) when a
    proxy's ask for it is in the log."""
    logs = running.data_dir / "logs"
    asked: dict[str, list[float]] = {}
    for at, message in _log_lines(logs / "proxy.log"):
        if (found := _ASKED.search(message)) and since - 60 <= at <= until:
            asked.setdefault(found[1], []).append(at)
    wakes = []
    for name in ("wake-lane.log", "worker.log"):
        for at, message in _log_lines(logs / name):
            found = _WOKEN.search(message)
            if not found or not since <= at <= until:
                continue
            phases = {k: float(v) for k, v in (p.split() for p in found[3].split(", "))}
            began = at - float(found[2])
            ask = max((a for a in asked.get(found[1], ()) if a <= began + 0.01), default=None)
            if ask is not None:
                phases = {"queue": max(began - ask, 0.0), **phases}
            wakes.append(phases | {"total": at - (ask if ask is not None else began)})
    return wakes


def wake_brief(wakes: list[dict[str, Any]]) -> str:
    """Each phase's p50/p95 over ``wakes`` (seconds), in the order a wake runs them."""
    order = ("queue", "lease", "read", "render", "start", "healthy", "published", "total")
    parts = []
    for phase in order:
        values = [w[phase] for w in wakes if phase in w]
        if values:
            p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
            parts.append(f"{phase} {p50:.2f}/{p95:.2f}")
    return f"{len(wakes)} logged; p50/p95 s: " + ", ".join(parts)


# Tenants ----------------------------------------------------------------------------------


@dataclass
class Client:
    user_id: str
    token: str
    since: str | None = None
    sent: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


@dataclass
class Tenant:
    id: str
    slug: str
    base_url: str  # through the proxy, /t/<slug>
    room_id: str = ""
    clients: list[Client] = field(default_factory=list)
    healing: bool = False  # its homeserver was killed and has not answered a probe since
    kills: int = 0  # how many times it was killed: a request in flight at a kill is the heal's


def create_plan(api: httpx.Client, idle_after: int | None) -> None:
    limits: dict[str, Any] = {}
    if idle_after is not None:
        limits["idle_after_seconds"] = idle_after
    body = {"code": PLAN, "name": "Density", "currency": "EUR", "limits": limits}
    response = api.post("/v1/plans", json=body)
    if response.status_code == 422 and "idle_after_seconds" in response.text:
        raise RuntimeError(
            "this platform has no sleeping homeservers yet (the plan limit idle_after_seconds "
            "is refused); run with --no-sleep"
        )
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/plans: {response.status_code} {response.text}")


def post_tenant(api: httpx.Client, slug: str) -> str:
    body = {"slug": slug, "display_name": slug, "plan": PLAN}
    response = api.post("/v1/tenants", json=body)
    if response.status_code != 202:
        raise RuntimeError(f"POST /v1/tenants: {response.status_code} {response.text}")
    return str(response.json()["id"])


def tenant_view(api: httpx.Client, tenant_id: str) -> dict[str, Any]:
    tenant: dict[str, Any] = api.get(f"/v1/tenants/{tenant_id}").json()
    if tenant["status"] not in ("pending", "provisioning", "active"):
        raise RuntimeError(f"tenant {tenant_id} ended as {tenant['status']}")
    return tenant


def homeserver_state(tenant: dict[str, Any]) -> str | None:
    """The sleep contract: ``homeserver.state`` is "awake" or "asleep" (absent before it)."""
    homeserver = tenant.get("homeserver")
    return homeserver.get("state") if isinstance(homeserver, dict) else None


def matrix(
    http: httpx.Client, method: str, url: str, token: str | None = None, **kw: Any
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = http.request(method, url, headers=headers, timeout=REQUEST_TIMEOUT_S, **kw)
    if response.status_code != 200:
        raise RuntimeError(f"{method} {url}: {response.status_code} {response.text[:200]}")
    body: dict[str, Any] = response.json()
    return body


def set_up_tenant(api: httpx.Client, http: httpx.Client, tenant: Tenant) -> None:
    """Two users signed in through the proxy, a room they share, and a first sync each."""
    for name in ("alice", "bob"):
        password = uuid.uuid4().hex
        response = api.post(
            f"/v1/tenants/{tenant.id}/users", json={"username": name, "password": password}
        )
        if response.status_code != 201:
            raise RuntimeError(f"creating {name}: {response.status_code} {response.text}")
        login = matrix(
            http,
            "POST",
            f"{tenant.base_url}/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": password,
            },
        )
        tenant.clients.append(Client(login["user_id"], login["access_token"]))
    alice, bob = tenant.clients
    room = matrix(
        http,
        "POST",
        f"{tenant.base_url}/_matrix/client/v3/createRoom",
        alice.token,
        json={"preset": "private_chat", "invite": [bob.user_id]},
    )
    tenant.room_id = room["room_id"]
    matrix(http, "POST", f"{tenant.base_url}/_matrix/client/v3/join/{tenant.room_id}", bob.token)
    for client in tenant.clients:
        sync = matrix(
            http,
            "GET",
            f"{tenant.base_url}/_matrix/client/v3/sync",
            client.token,
            params={"timeout": "0", "filter": SYNC_FILTER},
        )
        client.since = sync["next_batch"]


def room_for_one_more(
    running: RunningPlatform, args: argparse.Namespace, in_flight: int
) -> str | None:
    """None if one more tenant fits, else what stops it: the memory budget (``--no-sleep``),
    or in any mode the machine's available memory (other work shares it)."""
    sample = memory_sample(running)
    coming = max(sample["largest_homeserver_rss"], 160 * MIB) * (in_flight + 1)
    used = sample["homeservers_rss"] + sample["platform_rss"]
    if args.no_sleep and used + coming > args.memory_budget_gib * 1024**3:
        return f"memory budget {args.memory_budget_gib:g} GiB"
    if sample["available"] - coming < MIN_AVAILABLE_BYTES:
        return "machine memory (1 GiB left)"
    return None


class ThreadClients:
    """One API client and one proxy client per provisioning thread (``--parallel`` of each),
    not per tenant; all closed at the end."""

    def __init__(self, running: RunningPlatform) -> None:
        self.running = running
        self.local = threading.local()
        self.opened: list[httpx.Client] = []
        self.lock = threading.Lock()

    def get(self) -> tuple[httpx.Client, httpx.Client]:
        if not hasattr(self.local, "pair"):
            pair = (self.running.api(), httpx.Client())
            with self.lock:
                self.opened.extend(pair)
            self.local.pair = pair
        return self.local.pair  # type: ignore[no-any-return]

    def close(self) -> None:
        for client in self.opened:
            client.close()


def provision_one(running: RunningPlatform, clients: ThreadClients, slug: str) -> Tenant:
    """POST the tenant, wait until it is active, set it up (in a provisioning thread)."""
    api, http = clients.get()
    tenant_id = post_tenant(api, slug)
    deadline = time.monotonic() + PROVISION_TIMEOUT_S
    while tenant_view(api, tenant_id)["status"] != "active":
        if time.monotonic() > deadline:
            raise RuntimeError(f"tenant {slug} not active after {PROVISION_TIMEOUT_S:.0f} s")
        time.sleep(0.2)  # polling interval of the API, as provisioning_bench does
    tenant = Tenant(tenant_id, slug, f"{running.proxy_url}/t/{slug}")
    set_up_tenant(api, http, tenant)
    return tenant


def provision_all(
    running: RunningPlatform, args: argparse.Namespace, samples: list[dict[str, Any]]
) -> tuple[list[Tenant], str, float]:
    """Provision and set up tenants, ``args.parallel`` in flight (provisioning and set-up
    both); returns them, why it stopped ("all", or what memory limit) and the seconds taken."""
    tenants: list[Tenant] = []
    stopped = "all"
    posted = 0
    started = time.perf_counter()
    clients = ThreadClients(running)
    in_flight: set[Future[Tenant]] = set()
    try:
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            while True:
                while stopped == "all" and posted < args.tenants and len(in_flight) < args.parallel:
                    limit = room_for_one_more(running, args, len(in_flight))
                    if limit is not None:
                        stopped = limit
                        break
                    slug = f"dens-{posted:04d}"
                    in_flight.add(pool.submit(provision_one, running, clients, slug))
                    posted += 1
                if not in_flight:
                    break
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    tenants.append(future.result())
                    if len(tenants) % args.progress_every == 0:
                        progress(running, args, len(tenants), started, samples)
    finally:
        for future in in_flight:
            future.cancel()
        clients.close()
    return tenants, stopped, time.perf_counter() - started


def progress(
    running: RunningPlatform,
    args: argparse.Namespace,
    done: int,
    started: float,
    samples: list[dict[str, Any]],
) -> None:
    sample = memory_sample(running)
    samples.append({"phase": "provisioning", "tenants": done, **sample})
    elapsed = time.perf_counter() - started
    per_minute = done / elapsed * 60
    eta = (args.tenants - done) / per_minute if per_minute else math.inf
    print(
        f"  {done}/{args.tenants} tenants up after {elapsed / 60:.1f} min "
        f"({per_minute:.1f} a minute, ETA {eta:.0f} min if nothing stops it); "
        f"homeservers running {sample['homeservers_running']}, "
        f"{sample['homeservers_rss'] / MIB:.0f} MiB RSS, "
        f"platform {sample['platform_rss'] / MIB:.0f} MiB, "
        f"available {sample['available'] / MIB:.0f} MiB",
        flush=True,
    )


def wait_until_asleep(running: RunningPlatform, tenants: list[Tenant], timeout: float) -> int:
    """Poll the API until every tenant's homeserver is asleep (or the deadline); how many are."""
    deadline = time.monotonic() + timeout
    asleep: set[str] = set()
    with running.api() as api:
        while time.monotonic() < deadline:
            for tenant in tenants:
                if tenant.id not in asleep and homeserver_state(tenant_view(api, tenant.id)) == (
                    "asleep"
                ):
                    asleep.add(tenant.id)
            if len(asleep) == len(tenants):
                break
            time.sleep(1.0)
    return len(asleep)


# Workload ---------------------------------------------------------------------------------


@dataclass
class Counts:
    requests: int = 0
    # Keyed by "heal" (sent or answered while the tenant's homeserver was killed and had not
    # answered the probe yet) or "other" (waking, awake or falling asleep): a 503 with
    # Retry-After is expected in a heal, nowhere else.
    retried_503: Counter[str] = field(default_factory=Counter)  # 503 + Retry-After, retried
    server_errors: Counter[str] = field(default_factory=Counter)  # every other 5xx answer
    no_answer: Counter[str] = field(default_factory=Counter)  # connection errors, timeouts
    lost_messages: int = 0  # sent (200) but never seen by the peer
    send_ms: list[float] = field(default_factory=list)
    wakes: list[dict[str, Any]] = field(default_factory=list)
    heals: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    error_kinds: Counter[str] = field(default_factory=Counter)  # "<context> <status> <error>"


def retry_after_s(response: httpx.Response) -> float | None:
    """The delay a 503 asks for (``Retry-After`` in seconds), None when it asks for none."""
    if response.status_code != 503:
        return None
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def matrix_error(response: httpx.Response) -> str:
    """The Matrix ``error`` of an answer (its first 60 characters), else its body's start."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:60]
    return str(body.get("error", "") if isinstance(body, dict) else body)[:60]


async def request(
    http: httpx.AsyncClient,
    counts: Counts,
    tenant: Tenant,
    method: str,
    url: str,
    token: str,
    **kw: Any,
) -> httpx.Response | None:
    """One client request; a 503 with Retry-After is retried after that delay (what a Matrix
    client does), for at most REQUEST_TIMEOUT_S; None when the request got no answer."""
    deadline = time.perf_counter() + REQUEST_TIMEOUT_S
    while True:
        healing, kills = tenant.healing, tenant.kills
        counts.requests += 1
        try:
            response = await http.request(
                method, url, headers={"Authorization": f"Bearer {token}"}, **kw
            )
        except httpx.HTTPError as exc:
            context = "heal" if healing or tenant.healing or tenant.kills != kills else "other"
            counts.no_answer[context] += 1
            counts.error_kinds[f"{context} {method} {type(exc).__name__}"] += 1
            counts.errors.append(f"{context}: {method} {url}: {type(exc).__name__}")
            return None
        context = "heal" if healing or tenant.healing or tenant.kills != kills else "other"
        delay = retry_after_s(response)
        if delay is not None and time.perf_counter() + delay < deadline:
            counts.retried_503[context] += 1
            counts.error_kinds[f"{context} {method} 503 {matrix_error(response)}"] += 1
            if context != "heal":
                counts.errors.append(f"{context}: {method} {url}: 503 {response.text[:120]}")
            await asyncio.sleep(min(delay, RETRY_AFTER_CAP_S))  # as the answer asks
            continue
        if response.status_code >= 500:
            counts.server_errors[context] += 1
            kind = f"{context} {method} {response.status_code} {matrix_error(response)}"
            counts.error_kinds[kind] += 1
            counts.errors.append(
                f"{context}: {method} {url}: {response.status_code} {response.text[:120]}"
            )
        return response


async def sync(http: httpx.AsyncClient, counts: Counts, tenant: Tenant, client: Client) -> bool:
    params = {"timeout": "0", "filter": SYNC_FILTER}
    if client.since:
        params["since"] = client.since
    response = await request(
        http, counts, tenant, "GET", f"{tenant.base_url}/_matrix/client/v3/sync", client.token,
        params=params,
    )  # fmt: skip
    if response is None or response.status_code != 200:
        return False
    body = response.json()
    client.since = body["next_batch"]
    room = (body.get("rooms", {}).get("join") or {}).get(tenant.room_id) or {}
    for event in room.get("timeline", {}).get("events", []):
        client.seen.add(event["event_id"])
    return True


async def send(http: httpx.AsyncClient, counts: Counts, tenant: Tenant, client: Client) -> None:
    txn = uuid.uuid4().hex
    url = f"{tenant.base_url}/_matrix/client/v3/rooms/{tenant.room_id}/send/m.room.message/{txn}"
    started = time.perf_counter()
    response = await request(
        http, counts, tenant, "PUT", url, client.token,
        json={"msgtype": "m.text", "body": "density"},
    )  # fmt: skip
    if response is not None and response.status_code == 200:
        counts.send_ms.append((time.perf_counter() - started) * 1000)
        client.sent.append(response.json()["event_id"])


async def heal_sample(
    running: RunningPlatform,
    http: httpx.AsyncClient,
    counts: Counts,
    tenant: Tenant,
    round_no: int,
    after: float,
) -> None:
    """``after`` seconds into the tenant's activity, kill -9 its homeserver, then probe it
    (whoami as its first user) until the first 200 through the proxy: the heal time."""
    await asyncio.sleep(after)  # let its clients chat first
    record: dict[str, Any] = {"round": round_no, "slug": tenant.slug, "ms": None}
    counts.heals.append(record)
    pid = await asyncio.to_thread(tenant_homeserver_pid, running, tenant.id)
    if pid is None:
        record["error"] = "no live homeserver to kill"
        return
    client = tenant.clients[0]
    url = f"{tenant.base_url}/_matrix/client/v3/account/whoami"
    tenant.healing = True
    tenant.kills += 1
    killed = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    try:
        while time.perf_counter() - killed < HEAL_TIMEOUT_S:
            response = await request(http, counts, tenant, "GET", url, client.token)
            if response is not None and response.status_code == 200:
                record["ms"] = (time.perf_counter() - killed) * 1000
                return
            await asyncio.sleep(0.1)  # a client's pause before retrying a failed request
        record["error"] = f"no 200 within {HEAL_TIMEOUT_S:.0f} s"
    finally:
        tenant.healing = False


async def active_tenant(
    running: RunningPlatform,
    api: httpx.AsyncClient,
    http: httpx.AsyncClient,
    counts: Counts,
    tenant: Tenant,
    round_no: int,
    arrival: float,
    args: argparse.Namespace,
    heal: bool,
) -> None:
    """``arrival`` seconds into the round the tenant's users arrive: both clients at once, a
    first sync (the wake), then send + sync until the round ends, then catch up on everything
    the peer sent. With ``heal``, its homeserver is killed meanwhile."""
    await asyncio.sleep(arrival)  # when this tenant's users arrive in the round
    state = homeserver_state((await api.get(f"/v1/tenants/{tenant.id}")).json())
    first_answer = asyncio.get_running_loop().create_future()
    started = time.perf_counter()

    async def first_sync(client: Client) -> None:
        await sync(http, counts, tenant, client)
        if not first_answer.done():
            first_answer.set_result(time.perf_counter())

    await asyncio.gather(*(first_sync(c) for c in tenant.clients))
    counts.wakes.append(
        {
            "round": round_no,
            "slug": tenant.slug,
            "arrival_s": round(arrival, 3),
            "state_before": state,
            "ms": (first_answer.result() - started) * 1000,
        }
    )
    seconds = max(args.round_seconds - arrival, args.interval)
    deadline = time.perf_counter() + seconds

    async def loop(client: Client) -> None:
        while time.perf_counter() < deadline:
            await send(http, counts, tenant, client)
            await sync(http, counts, tenant, client)
            await asyncio.sleep(args.interval)  # pacing of a chatting user, not synchronisation

    jobs = [loop(c) for c in tenant.clients]
    if heal:
        jobs.append(heal_sample(running, http, counts, tenant, round_no, min(2.0, seconds / 3)))
    await asyncio.gather(*jobs)
    for client, peer in (tenant.clients, tenant.clients[::-1]):
        catch_up = time.perf_counter() + CATCH_UP_S
        while not set(peer.sent) <= client.seen and time.perf_counter() < catch_up:
            await sync(http, counts, tenant, client)
        counts.lost_messages += len(set(peer.sent) - client.seen)
        peer.sent.clear()
        client.seen.clear()


def heals_per_round(samples: int, rounds: int, active: int) -> list[int]:
    """``samples`` heal samples spread over the rounds, at most one per active tenant."""
    if rounds <= 0:
        return []
    return [
        min(active, samples // rounds + (1 if n < samples % rounds else 0)) for n in range(rounds)
    ]


async def sample_memory(
    running: RunningPlatform,
    every: float,
    phase: str,
    into: list[dict[str, Any]],
    cpu: CpuAccount,
) -> None:
    """A memory sample every ``every`` seconds until cancelled (the round's peak)."""
    while True:
        into.append({"phase": phase, **await asyncio.to_thread(memory_sample, running, cpu)})
        await asyncio.sleep(every)  # sampling period


async def workload(
    running: RunningPlatform, tenants: list[Tenant], args: argparse.Namespace
) -> tuple[Counts, list[dict[str, Any]]]:
    counts = Counts()
    samples: list[dict[str, Any]] = []
    per_round = max(1, round(len(tenants) * args.active_share))
    spread = arrival_spread_s(args)
    heals = heals_per_round(args.heal_samples, args.rounds, per_round)
    last_active: list[Tenant] = []
    async with httpx.AsyncClient(
        base_url=running.api_url, headers=running.headers, timeout=30
    ) as api:
        for n in range(args.rounds):
            active = [tenants[(n * per_round + k) % len(tenants)] for k in range(per_round)]
            ROUND_GROUPS.clear()
            ROUND_GROUPS.update({t.id: HS_LAST for t in last_active})
            ROUND_GROUPS.update({t.id: HS_THIS for t in active})
            last_active = active
            healed = {k * per_round // heals[n] for k in range(heals[n])}
            started = time.perf_counter()
            own_cpu = time.process_time()
            reported_before = page_reporting().reported_kib
            cpu = CpuAccount()
            sampler = asyncio.create_task(
                sample_memory(running, args.sample_every, f"during round {n + 1}", samples, cpu)
            )
            try:
                # Each tenant's users have connections of their own, as Matrix clients do: one
                # pool shared by every active client cost this script ~0.5 of the machine's 2
                # cores (httpcore checks each pooled connection on every request).
                async with contextlib.AsyncExitStack() as own:
                    pools = [await own.enter_async_context(client_pool()) for _ in active]
                    await asyncio.gather(
                        *(
                            active_tenant(
                                running,
                                api,
                                pools[k],
                                counts,
                                t,
                                n + 1,
                                k * spread / per_round,
                                args,
                                k in healed,
                            )  # fmt: skip
                            for k, t in enumerate(active)
                        )
                    )
            finally:
                sampler.cancel()
            took = time.perf_counter() - started
            sample = memory_sample(running, cpu)
            sample["logged_wakes"] = logged_wakes(running, cpu.started, time.time())
            sample["load_generator_cores"] = (time.process_time() - own_cpu) / took
            sample["cpu_cores"] = cpu.cores()
            reported = page_reporting().reported_kib
            sample["handed_back_mib"] = (
                None if reported is None or reported_before is None else
                (reported - reported_before) // 1024
            )  # fmt: skip
            samples.append({"phase": f"round {n + 1}", **sample})
            wakes = [w for w in counts.wakes if w["round"] == n + 1]
            asleep = sum(1 for w in wakes if w["state_before"] == "asleep")
            wake_p95 = percentile([w["ms"] for w in wakes], 0.95)
            print(
                f"  round {n + 1}/{args.rounds}: {len(active)} active ({asleep} were asleep), "
                f"first answer p95 {fmt_ms(wake_p95)} ms, {heals[n]} killed, "
                f"{took:.0f} s (this script: {sample['load_generator_cores']:.2f} cores); "
                f"homeservers running "
                f"{sample['homeservers_running']}, {sample['homeservers_rss'] / MIB:.0f} MiB RSS "
                f"({sample['homeservers_pss'] / MIB:.0f} PSS), platform "
                f"{sample['platform_rss'] / MIB:.0f} MiB RSS ({sample['platform_pss'] / MIB:.0f} "
                f"PSS)",
                flush=True,
            )
            handed_back = sample["handed_back_mib"]
            print(
                f"    cores: {cpu_brief(sample['cpu_cores'])}"
                + ("" if handed_back is None else f"; handed back to the host {handed_back} MiB"),
                flush=True,
            )
            print(f"    first answers by arrival: {arrival_brief(wakes, spread)}", flush=True)
            print(f"    the worker's wakes: {wake_brief(sample['logged_wakes'])}", flush=True)
            timeline = [
                s["cpu_busy"]
                for s in samples
                if s["phase"] == f"during round {n + 1}" and s.get("cpu_busy")
            ] + [sample["cpu_busy"]]
            print(
                "    busy cores (of which homeservers: all, this round's, last round's; MiB not "
                "yet written back; thousand page faults a second) at s: "
                + ", ".join(
                    f"{b['at']:.0f}: {b['busy']:.1f} ({b['homeservers']:.1f}, "
                    f"{b.get('this_round', 0):.1f}, {b.get('last_round', 0):.1f}; "
                    f"{b['dirty_mib']}; {b.get('faults_per_s', 0) / 1000:.0f}k)"
                    for b in timeline
                    # The first window lasts under 1 s, mostly the sampler's own first scan.
                    if b and b["at"] >= 1
                ),
                flush=True,
            )
    return counts, samples


def arrival_brief(wakes: list[dict[str, Any]], spread: float, parts: int = 5) -> str:
    """Median first answer of the tenants arriving in each fifth of the round's arrival window:
    a row that rises from one fifth to the next is a queue building up (the machine saturated
    from that point), a row that is flat and high is a slow machine."""
    if not wakes:
        return "none"
    if spread <= 0:
        return f"all at once, {fmt_ms(percentile([w['ms'] for w in wakes], 0.5))} ms"
    width = spread / parts
    groups: list[list[float]] = [[] for _ in range(parts)]
    for w in wakes:
        groups[min(parts - 1, int(w["arrival_s"] / width))].append(w["ms"])
    return ", ".join(
        f"{k * width:.0f}-{(k + 1) * width:.0f} s: "
        + (f"{fmt_ms(percentile(g, 0.5))} ms" if g else "-")
        for k, g in enumerate(groups)
    )


def arrival_spread_s(args: argparse.Namespace) -> float:
    """``--arrival-spread`` in seconds: a number of seconds, or ``N%`` of the round."""
    value = str(args.arrival_spread).strip()
    if value.endswith("%"):
        return args.round_seconds * float(value[:-1]) / 100
    return float(value)


# Report -----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def total(sample: dict[str, Any]) -> int:
    return int(sample["homeservers_rss"] + sample["platform_rss"])


def memory_brief(sample: dict[str, Any]) -> dict[str, Any]:
    keys = ("phase", "homeservers_running", "homeservers_rss", "homeservers_pss")
    more = ("platform_rss", "platform_pss", "machine_used_rise", "cpu_cores")
    return {k: sample.get(k) for k in (*keys, *more)}


def summarize(
    args: argparse.Namespace,
    tenants: list[Tenant],
    stopped: str,
    provisioning_s: float,
    asleep: int | None,
    counts: Counts,
    samples: list[dict[str, Any]],
) -> dict[str, Any]:
    rounds = [s for s in samples if s["phase"].startswith("round")]
    workload = [s for s in samples if "round" in s["phase"]]
    peak = max(workload, key=total, default={})
    wake_ms = [w["ms"] for w in counts.wakes]
    from_sleep = [w["ms"] for w in counts.wakes if w["state_before"] == "asleep"]
    heal_ms = [h["ms"] for h in counts.heals if h["ms"] is not None]
    return {
        "mode": "no-sleep" if args.no_sleep else "sleep",
        "tenants_requested": args.tenants,
        "tenants": len(tenants),
        "stopped_by": stopped,
        "provisioning_s": round(provisioning_s, 1),
        "provisioned_per_minute": len(tenants) / provisioning_s * 60 if provisioning_s else None,
        "asleep_before_workload": asleep,
        "active_per_round": max(1, round(len(tenants) * args.active_share)),
        "arrival_spread_s": arrival_spread_s(args),
        "peak": peak,
        "peak_machine_used_rise": max(
            (s["machine_used_rise"] for s in workload if s.get("machine_used_rise") is not None),
            default=None,
        ),
        "rounds": [memory_brief(s) for s in rounds],
        "mean_homeservers_rss": statistics.fmean(s["homeservers_rss"] for s in rounds)
        if rounds
        else None,
        "wake_count": len(wake_ms),
        "wake_p50_ms": percentile(wake_ms, 0.5),
        "wake_p95_ms": percentile(wake_ms, 0.95),
        "wake_max_ms": max(wake_ms, default=None),
        "woken_from": dict(Counter(str(w["state_before"]) for w in counts.wakes)),
        "from_asleep_count": len(from_sleep),
        "from_asleep_p50_ms": percentile(from_sleep, 0.5),
        "from_asleep_p95_ms": percentile(from_sleep, 0.95),
        "from_asleep_max_ms": max(from_sleep, default=None),
        "heal_count": len(counts.heals),
        "heal_healed": len(heal_ms),
        "heal_p50_ms": percentile(heal_ms, 0.5),
        "heal_max_ms": max(heal_ms, default=None),
        "send_count": len(counts.send_ms),
        "send_p50_ms": percentile(counts.send_ms, 0.5),
        "send_p99_ms": percentile(counts.send_ms, 0.99),
        "requests": counts.requests,
        "retried_503": dict(counts.retried_503),
        "server_errors": dict(counts.server_errors),
        "no_answer": dict(counts.no_answer),
        "lost_messages": counts.lost_messages,
        "error_kinds": dict(counts.error_kinds.most_common()),
        "first_errors": counts.errors[:20],
        "wakes": counts.wakes,
        "heals": counts.heals,
    }


def rise_mib(sample: dict[str, Any]) -> str:
    rise = sample.get("machine_used_rise")
    return "-" if rise is None else f"{rise / MIB:.0f}"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_report(s: dict[str, Any]) -> None:
    peak = s["peak"] or {}
    print(f"\nDensity, {s['mode']}: {s['tenants']} tenants (asked {s['tenants_requested']}, "
          f"stopped by: {s['stopped_by']}), {s['active_per_round']} active per round, "
          f"arriving over {s['arrival_spread_s']:g} s")  # fmt: skip
    rate = s["provisioned_per_minute"]
    print(f"  provisioning: {s['provisioning_s'] / 60:.1f} min, {rate or 0:.1f} tenants a minute")
    if s["asleep_before_workload"] is not None:
        print(f"  asleep before the workload: {s['asleep_before_workload']}/{s['tenants']}")
    for r in s["rounds"]:
        print(
            f"  end of {r['phase']}: {r['homeservers_running']} homeservers running, "
            f"{r['homeservers_rss'] / MIB:.0f} MiB RSS ({r['homeservers_pss'] / MIB:.0f} PSS); "
            f"platform {r['platform_rss'] / MIB:.0f} MiB RSS ({r['platform_pss'] / MIB:.0f} PSS); "
            f"machine +{rise_mib(r)} MiB"
        )
        if r.get("cpu_cores"):
            print(f"    cores: {cpu_brief(r['cpu_cores'])}")
    if peak:
        print(
            f"  peak ({peak['phase']}): {peak['homeservers_running']} homeservers running, "
            f"{peak['homeservers_rss'] / MIB:.0f} MiB RSS ({peak['homeservers_pss'] / MIB:.0f} "
            f"PSS); platform {peak['platform_rss'] / MIB:.0f} MiB RSS "
            f"({peak['platform_pss'] / MIB:.0f} PSS); total {total(peak) / MIB:.0f} MiB RSS; "
            f"the machine's memory in use rose {rise_mib(peak)} MiB"
        )
    print(
        f"  the machine's memory in use, highest rise: {rise_mib({'machine_used_rise': s['peak_machine_used_rise']})} MiB"
    )
    print(
        f"  first request → first answer, all {s['wake_count']} p50/p95/max: "
        f"{fmt_ms(s['wake_p50_ms'])} / {fmt_ms(s['wake_p95_ms'])} / {fmt_ms(s['wake_max_ms'])} "
        f"ms; states before: {s['woken_from']}"
    )
    print(
        f"  … of the {s['from_asleep_count']} asleep (wake) p50/p95/max: "
        f"{fmt_ms(s['from_asleep_p50_ms'])} / {fmt_ms(s['from_asleep_p95_ms'])} / "
        f"{fmt_ms(s['from_asleep_max_ms'])} ms"
    )
    print(
        f"  heal (kill -9 → first 200 through the proxy): {s['heal_healed']} of "
        f"{s['heal_count']} healed, p50 {fmt_ms(s['heal_p50_ms'])} ms, max "
        f"{fmt_ms(s['heal_max_ms'])} ms"
    )
    print(
        f"  sends: {s['send_count']}, p50 {fmt_ms(s['send_p50_ms'])} ms, "
        f"p99 {fmt_ms(s['send_p99_ms'])} ms; requests {s['requests']}: "
        f"503 + Retry-After (retried) {s['retried_503']}, other 5xx {s['server_errors']}, "
        f"no answer {s['no_answer']}, lost messages {s['lost_messages']}"
    )
    for kind, count in s["error_kinds"].items():
        print(f"    {count} × {kind}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument(
        "--no-sleep", action="store_true", help="sleeping off; as many tenants as fit"
    )
    parser.add_argument("--memory-budget-gib", type=float, default=8.0, help="--no-sleep only")
    parser.add_argument("--idle-after", type=int, default=30, help="plan idle_after_seconds")
    parser.add_argument("--parallel", type=int, default=4, help="tenants provisioning at once")
    parser.add_argument(
        "--extra-worker-concurrency",
        type=int,
        default=0,
        help="start one more c3 worker with this many processes beside c3 up's (2)",
    )
    parser.add_argument("--progress-every", type=int, default=25, help="tenants per progress line")
    parser.add_argument("--active-share", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--round-seconds", type=float, default=30.0)
    parser.add_argument(
        "--interval",
        type=float,
        default=5.0,
        help="seconds between a client's sends (5: Synapse needs ~21 ms of CPU per message, so "
        "fifty tenants chatting at 1 s ask more than 2 cores of Synapse alone)",
    )
    parser.add_argument(
        "--arrival-spread",
        default="50%",
        help="active tenants' users arrive evenly over this many seconds of each round, or "
        "N%% of the round (0: all at once)",
    )
    parser.add_argument(
        "--heal-samples", type=int, default=5, help="homeservers killed (-9) during the workload"
    )
    parser.add_argument(
        "--sample-every", type=float, default=5.0, help="seconds between memory samples"
    )
    parser.add_argument("--keep-data", action="store_true")
    args = parser.parse_args()
    try:
        arrival_spread_s(args)
    except ValueError:
        parser.error(f"--arrival-spread: seconds or N%, not {args.arrival_spread!r}")
    return args


def main() -> int:
    args = parse_args()
    stop_on_sigterm()
    files = raise_file_limit()
    mode = "no-sleep" if args.no_sleep else "sleep"
    overrides = {k: v for k, v in os.environ.items() if k.startswith("C3_")}
    overrides["C3_BASE_DOMAIN"] = BASE_DOMAIN
    data_dir = Path(tempfile.mkdtemp(prefix=f"c3-density-{mode}-"))
    samples: list[dict[str, Any]] = []
    touch_us = first_touch_us()
    reporting = page_reporting()
    print(
        f"this machine: {touch_us:.1f} µs per page written for the first time; free page "
        f"reporting: {reporting.brief()}",
        flush=True,
    )
    MACHINE_BEFORE.append(machine_used())
    with (
        running_platform(overrides, data_dir, keep_data=args.keep_data) as running,
        extra_worker(running, args.extra_worker_concurrency),
    ):
        with running.api() as api:
            create_plan(api, None if args.no_sleep else args.idle_after)
        print(
            f"{mode}: provisioning up to {args.tenants} tenants, {args.parallel} at a time "
            f"(file limit {files})",
            flush=True,
        )
        tenants, stopped, provisioning_s = provision_all(running, args, samples)
        print(f"  {len(tenants)} tenants in {provisioning_s / 60:.1f} min", flush=True)
        samples.append({"phase": "provisioned", **memory_sample(running)})
        asleep = None
        if not args.no_sleep:
            print("waiting for the tenants to fall asleep", flush=True)
            asleep = wait_until_asleep(running, tenants, args.idle_after + 120)
            samples.append({"phase": "asleep", **memory_sample(running)})
        print(f"workload: {args.rounds} rounds of {args.round_seconds:.0f} s", flush=True)
        counts, round_samples = asyncio.run(workload(running, tenants, args))
        samples.extend(round_samples)
    summary = summarize(args, tenants, stopped, provisioning_s, asleep, counts, samples)
    print_report(summary)
    report = {
        "started_at": datetime.now(UTC).isoformat(),
        "args": vars(args),
        "host": {
            "cpus": os.cpu_count(),
            "memory": psutil.virtual_memory().total,
            "python": host_platform.python_version(),
            "load_average": os.getloadavg(),
            "file_limit": files,
            "first_touch_us_per_page": round(touch_us, 2),
            "page_reporting_order": reporting.order,
        },
        "summary": summary,
        "samples": samples,
    }
    path = write_results(f"density-{mode}", report)
    print(f"\nresults written to {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
