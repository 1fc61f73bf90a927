"""Start latency, start CPU and memory of tenant homeservers, per mode (``--modes``; issue 16,
wake latency): ``zygote`` (forked from the Synapse zygote, as shipped), ``zygote-jemalloc``
(the same with Debian's jemalloc preloaded, ``C3_SYNAPSE_JEMALLOC=true``), ``zygote-synapse-gc``
(forked, with Synapse's own 0.1 s collector checks: ``C3_SYNAPSE_GC_CHECK_S=0.1``),
``zygote-no-warm-up`` (the zygote without its config warm-up) and ``exec`` (a process of its
own, ``C3_SYNAPSE_ZYGOTE`` off).

For each mode, in turns (``--repeat`` rounds, the modes interleaved so all see the same load):

1. renders ``--homeservers`` tenant configs through the local backend exactly as the provisioner
   does (SQLite, the plan defaults) and starts each once, so its schema exists (a wake starts a
   homeserver that has one) and, with ``--idle-window``, until Synapse's background updates on
   it are done (a tenant never sleeps before: ``HOMESERVER_DUE_WORK_SQL``), then stops them all;
2. **start latency**: starts them again one after another, each timed from ``backend.start`` to
   its first ``/health`` 200 (polled every 10 ms), with the CPU the homeserver used by then
   and the pages it faulted in (minor faults: mostly copies of the zygote's pages, each a
   first write to a page; ``/proc/<pid>/stat``): what a wake costs on top of the platform's
   own hops. The zygote mode's first round includes starting the zygote for the first start
   only if it was not running (``--cold-zygote`` keeps that; by default it is warmed first, as
   a worker does when it starts);
3. **memory**: once all run, waits ``--settle`` seconds and sums RSS and PSS
   (``/proc/<pid>/smaps_rollup``) over the homeservers (and the zygote, reported apart): PSS
   splits pages the forked homeservers share with the zygote and each other;
   **idle CPU**: then, with ``--idle-window S``, the CPU each homeserver used in ``S`` seconds
   with no client (its timers alone: what every awake homeserver costs a sleeping platform
   between requests), in cores, and its threads' voluntary context switches a second;
4. stops them (and the zygote).

Prints one table and writes ``benchmarks/results/zygote-<UTC stamp>.json``.

Usage (from the repository root)::

    PYTHONPATH=services:. .venv/bin/python benchmarks/zygote_bench.py --homeservers 10 --repeat 3
    PYTHONPATH=services:. .venv/bin/python benchmarks/zygote_bench.py --repeat 2 --settle 5
        --idle-window 30 --modes zygote zygote-synapse-gc     # (one line)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "services"))
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.density_bench import rss_pss  # noqa: E402
from benchmarks.harness import write_results  # noqa: E402
from benchmarks.nginx import cpu_seconds, minor_faults, voluntary_switches  # noqa: E402
from provisioner.backends.base import HOMESERVER_DUE_WORK_SQL, HomeserverTarget  # noqa: E402
from provisioner.backends.local import LocalBackend  # noqa: E402
from provisioner.backends.zygote_server import SYNAPSE_GC_CHECK_S  # noqa: E402
from provisioner.synapse_config import HomeserverSecrets  # noqa: E402
from tests.helpers.platform import poll  # noqa: E402

MIB = 1024 * 1024
MODES = ("zygote", "zygote-jemalloc", "zygote-synapse-gc", "zygote-no-warm-up", "exec")
SYNAPSES_OWN_GC_CHECK_S = 0.1  # the period Synapse starts its collector checks with


def wait_healthy(
    client: httpx.Client, url: str, timeout: float = 120.0, why: Any = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get(url + "/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} not healthy after {timeout}s: {why()}")


def targets(backend: LocalBackend, count: int) -> list[HomeserverTarget]:
    taken: set[int] = set()
    found = []
    for i in range(count):
        port = backend.allocate_port(taken)
        taken.update({port, port + 1})
        found.append(
            HomeserverTarget(
                tenant_id=f"t{i}",
                server_name=f"t{i}.c3.bench",
                public_baseurl=f"http://t{i}.c3.bench/",
                port=port,
                limits={},
                secrets=HomeserverSecrets.generate(),
            )
        )
    return found


def background_updates_done(backend: LocalBackend, target: HomeserverTarget) -> bool:
    db = backend.tenant_dir(target.tenant_id) / "homeserver.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(HOMESERVER_DUE_WORK_SQL["background_updates"]).fetchone()[0] == 0


def idle_cost(pids: list[int], window: float) -> tuple[list[float], list[float]]:
    """Cores and voluntary context switches a second each process used in ``window`` s."""
    cpu0 = [cpu_seconds(pid) for pid in pids]
    switches0 = [voluntary_switches(pid) for pid in pids]
    began = time.monotonic()
    time.sleep(window)  # the measurement window itself, not a wait for anything
    took = time.monotonic() - began
    cores = [(cpu_seconds(pid) - c) / took for pid, c in zip(pids, cpu0, strict=True)]
    rates = [(voluntary_switches(pid) - v) / took for pid, v in zip(pids, switches0, strict=True)]
    return cores, rates


def one_mode(
    root: Path, mode: str, count: int, settle: float, cold: bool, idle_window: float = 0.0
) -> dict[str, Any]:
    zygote = mode != "exec"
    backend = LocalBackend(
        root / mode,
        zygote=zygote,
        jemalloc=mode == "zygote-jemalloc",
        gc_check_s=SYNAPSES_OWN_GC_CHECK_S if mode == "zygote-synapse-gc" else SYNAPSE_GC_CHECK_S,
    )
    if mode == "zygote-no-warm-up":
        assert backend.zygote is not None
        backend.zygote.warm_up = None
    client = httpx.Client(timeout=2.0)
    homeservers = targets(backend, count)
    try:
        for target in homeservers:  # schema made once, as for a provisioned tenant
            backend.render(target)
            backend.start(target)
            wait_healthy(
                client,
                backend.upstream_url(target),
                why=partial(backend.log_tail, target.tenant_id),
            )
        if idle_window > 0:
            for target in homeservers:
                poll(
                    partial(background_updates_done, backend, target),
                    timeout=900,
                    what=f"{target.tenant_id}'s background updates",
                )
        for target in homeservers:
            backend.stop(target.tenant_id)
        if zygote and cold:
            assert backend.zygote is not None
            backend.zygote.stop()
        elif zygote:
            assert backend.zygote is not None
            backend.zygote.start()
        starts, cpu, faults = [], [], []
        for target in homeservers:
            began = time.perf_counter()
            backend.start(target)
            wait_healthy(
                client,
                backend.upstream_url(target),
                why=partial(backend.log_tail, target.tenant_id),
            )
            starts.append(time.perf_counter() - began)
            pid = backend._live_pid(target.tenant_id)
            assert pid is not None
            cpu.append(cpu_seconds(pid))  # a forked homeserver starts from zero on both
            faults.append(minor_faults(pid))
        time.sleep(settle)  # memory settles; a benchmark, not a test
        rss = pss = 0
        for target in homeservers:
            pid = backend._live_pid(target.tenant_id)
            assert pid is not None
            r, p = rss_pss(pid)
            rss, pss = rss + r, pss + p
        idle_cores: list[float] = []
        idle_switches: list[float] = []
        if idle_window > 0:
            live = [backend._live_pid(target.tenant_id) for target in homeservers]
            idle_cores, idle_switches = idle_cost([pid for pid in live if pid], idle_window)
        zygote_rss, zygote_pss = (0, 0)
        if zygote and backend.zygote is not None:
            zpid = backend.zygote._live_pid()
            if zpid is not None:
                zygote_rss, zygote_pss = rss_pss(zpid)
        return {
            "mode": mode,
            "starts_s": starts,
            "cpu_to_health_s": cpu,
            "faults_to_health": faults,
            "rss_bytes": rss,
            "pss_bytes": pss,
            "zygote_rss_bytes": zygote_rss,
            "zygote_pss_bytes": zygote_pss,
            "idle_cores": idle_cores,
            "idle_switches_per_s": idle_switches,
        }
    finally:
        backend.stop_all()
        client.close()


def idle_line(run: dict[str, Any]) -> str:
    if not run["idle_cores"]:
        return ""
    return (
        f"; idle {statistics.median(run['idle_cores']):.4f} cores, "
        f"{statistics.median(run['idle_switches_per_s']):.1f} switches/s per homeserver"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--homeservers", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--cold-zygote", action="store_true")
    parser.add_argument(
        "--idle-window",
        type=float,
        default=0.0,
        help="seconds to measure each homeserver's CPU with no client, after --settle "
        "(0: not measured; the schema phase then also waits for Synapse's background updates)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="zygote: as shipped; zygote-jemalloc: the same with jemalloc preloaded; "
        "zygote-synapse-gc: with Synapse's own 0.1 s collector checks; "
        "zygote-no-warm-up: the zygote without its config warm-up; exec: a process of its own",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="c3-zygote-bench-") as tmp:
        for round_ in range(args.repeat):
            for mode in args.modes if round_ % 2 == 0 else reversed(args.modes):
                run = one_mode(
                    Path(tmp) / str(round_),
                    mode,
                    args.homeservers,
                    args.settle,
                    args.cold_zygote,
                    args.idle_window,
                )
                runs.append(run)
                starts = sorted(run["starts_s"])
                print(
                    f"round {round_} {run['mode']:17}: start→/health median "
                    f"{statistics.median(starts):.2f}s max {starts[-1]:.2f}s, CPU median "
                    f"{statistics.median(run['cpu_to_health_s']):.2f}s, faults median "
                    f"{statistics.median(run['faults_to_health']):.0f}; "
                    f"{args.homeservers} homeservers RSS {run['rss_bytes'] / MIB:.0f} MiB "
                    f"PSS {run['pss_bytes'] / MIB:.0f} MiB; zygote RSS "
                    f"{run['zygote_rss_bytes'] / MIB:.0f} MiB{idle_line(run)}",
                    flush=True,
                )
    print()
    print(
        f"| {args.homeservers} homeservers, {args.repeat} rounds | start → /health p50 / p95 / max "
        "| CPU to /health p50 / max | page faults to /health p50 | RSS per homeserver "
        "| PSS per homeserver | zygote RSS / PSS | idle cores per homeserver (switches a second) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        mine = [r for r in runs if r["mode"] == mode]
        starts = sorted(s for r in mine for s in r["starts_s"])
        cpu = sorted(s for r in mine for s in r["cpu_to_health_s"])
        faults = statistics.median(f for r in mine for f in r["faults_to_health"])
        p95 = starts[min(len(starts) - 1, int(round(0.95 * (len(starts) - 1))))]
        rss = statistics.median(r["rss_bytes"] for r in mine) / args.homeservers / MIB
        pss = statistics.median(r["pss_bytes"] for r in mine) / args.homeservers / MIB
        zr = statistics.median(r["zygote_rss_bytes"] for r in mine) / MIB
        zp = statistics.median(r["zygote_pss_bytes"] for r in mine) / MIB
        idle = [c for r in mine for c in r["idle_cores"]]
        switches = [c for r in mine for c in r["idle_switches_per_s"]]
        idle_cell = (
            f"{statistics.median(idle):.4f} ({statistics.median(switches):.1f})" if idle else "–"
        )
        print(
            f"| {mode} | {statistics.median(starts):.2f} / {p95:.2f} / {starts[-1]:.2f} s "
            f"| {statistics.median(cpu):.2f} / {cpu[-1]:.2f} s | {faults:.0f} | {rss:.1f} MiB "
            f"| {pss:.1f} MiB | {zr:.0f} / {zp:.0f} MiB | {idle_cell} |"
        )
    load_after = os.getloadavg()
    print(f"\nload average before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    out = write_results(
        "zygote", {"args": vars(args), "load": [load_before, load_after], "runs": runs}
    )
    print(f"wrote {out.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
