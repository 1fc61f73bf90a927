"""What one wake costs the machine, process by process, and what the woken tenant's first
messages cost (issue 16, "wake p95 ≤ 2 s"): the CPU a round of wakes asks of the machine.

The density benchmark says how long wakes take when many come at once; this one says what
each costs when it comes alone, so a round's demand can be added up: wakes a second × CPU a
wake, plus messages a second × CPU a message, against the cores there are.

One run:

1. starts the platform (``c3 up`` through ``benchmarks.harness``; the caller's ``C3_*``
   settings pass through) and provisions ``--tenants`` tenants on a plan with
   ``idle_after_seconds`` ``--idle-after``, each set up as the density benchmark sets up its
   tenants (two users signed in through the proxy, a room they share, a first sync each), and
   waits until every one is asleep;
2. measures ``--baseline`` seconds of the platform with every tenant asleep: what each process
   uses anyway (beat and the worker run two tasks a second), taken off everything below;
3. for each tenant in turn, on an otherwise quiet machine:

   - ``--quiet`` seconds with no client first, so the tenant before has settled;
   - **wake**: both users' first ``/sync`` at once, as a client that comes back does, until
     both are answered, then ``--tail`` seconds for what the platform does after (publishing
     the route, the wake's log line); the CPU each process used over that window;
   - **messages**: ``--messages`` times, the first user sends a message, then both sync
     (``timeout=0``): the CPU of each, the first message apart from the rest (a woken
     homeserver's caches are empty);

   the CPU of a process is the time its threads ran (``/proc/<pid>/task/*/schedstat``, to the
   nanosecond), grouped: the woken tenant's homeserver, the other homeservers, the proxy, the
   wake lane, the worker, the API, beat, Redis, the Synapse zygote, PostgreSQL (a platform
   database there), this script (the load generator); the other homeservers (woken before,
   awake until they idled ``--idle-after``) use their timers' CPU meanwhile, so they are not
   in the platform's total. The first tenant's wake is the
   platform's first (the proxy's first broker publish, the wake lane's first task: ~0.15 s
   of CPU more, once), so one more tenant is provisioned and its wake reported apart;
4. prints the medians over the tenants and writes ``benchmarks/results/wake-cost-<stamp>.json``.

Usage (from the repository root)::

    PYTHONPATH=services:. .venv/bin/python benchmarks/wake_cost_bench.py --tenants 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.density_bench import (  # noqa: E402
    BASE_DOMAIN,
    SYNC_FILTER,
    Client,
    Tenant,
    ThreadClients,
    cpu_parts,
    create_plan,
    homeserver_pids,
    matrix,
    platform_pids,
    provision_one,
    wait_until_asleep,
)
from benchmarks.harness import running_platform, stop_on_sigterm, write_results  # noqa: E402
from benchmarks.nginx import on_cpu_seconds  # noqa: E402
from tests.helpers.platform import RunningPlatform  # noqa: E402

WOKEN = "woken homeserver"
OTHERS = "other homeservers"
SCRIPT = "load generator"

Snapshot = tuple[float, dict[tuple[int, float], tuple[str, float]]]


def snapshot(running: RunningPlatform, woken: str) -> Snapshot:
    """(when, {(pid, start time): (group, CPU seconds so far)}) of every process of the
    platform, its homeservers, PostgreSQL and this script."""
    homeservers = homeserver_pids(running)
    parts = cpu_parts(running, homeservers, platform_pids(running, set(homeservers)))
    parts |= {pid: WOKEN if tenant == woken else OTHERS for pid, tenant in homeservers.items()}
    parts[os.getpid()] = SCRIPT
    seen: dict[tuple[int, float], tuple[str, float]] = {}
    for pid, group in parts.items():
        try:
            key = (pid, psutil.Process(pid).create_time())
        except psutil.Error:
            continue
        seen[key] = (group, on_cpu_seconds(pid))
    return time.time(), seen


def used(
    before: Snapshot, after: Snapshot, baseline: dict[str, float] | None = None
) -> dict[str, float]:
    """CPU seconds per group between two snapshots (a process that started in between from
    zero), less what ``baseline`` (CPU seconds a second) says each group uses anyway."""
    (then, old), (now, new) = before, after
    groups: defaultdict[str, float] = defaultdict(float)
    for key, (group, seconds) in new.items():
        groups[group] += seconds - (old[key][1] if key in old else 0.0)
    for group, rate in (baseline or {}).items():
        groups[group] -= rate * (now - then)
    return dict(groups)


def sync(http: httpx.Client, tenant: Tenant, client: Client) -> None:
    params = {"timeout": "0", "filter": SYNC_FILTER}
    if client.since:
        params["since"] = client.since
    body = matrix(
        http, "GET", f"{tenant.base_url}/_matrix/client/v3/sync", client.token, params=params
    )
    client.since = body["next_batch"]


def send(http: httpx.Client, tenant: Tenant, client: Client) -> None:
    url = (
        f"{tenant.base_url}/_matrix/client/v3/rooms/{tenant.room_id}/send/m.room.message/"
        f"{uuid.uuid4().hex}"
    )
    matrix(http, "PUT", url, client.token, json={"msgtype": "m.text", "body": "wake cost"})


def measure(
    running: RunningPlatform,
    http: httpx.Client,
    tenant: Tenant,
    args: argparse.Namespace,
    baseline: dict[str, float],
) -> dict[str, Any]:
    time.sleep(args.quiet)  # pacing: the tenant before has settled (its tail, its timers)
    before = snapshot(running, tenant.id)
    started = time.perf_counter()
    with ThreadPoolExecutor(len(tenant.clients)) as pool:  # both users at once; raises as sync
        list(pool.map(partial(sync, http, tenant), tenant.clients))
    wake_ms = (time.perf_counter() - started) * 1000
    time.sleep(args.tail)  # what the platform does after the answer: the route, the log
    woken = snapshot(running, tenant.id)
    first, peer = tenant.clients
    messages = []
    last = woken
    for _ in range(args.messages):
        send(http, tenant, first)
        sync(http, tenant, first)
        sync(http, tenant, peer)
        now = snapshot(running, tenant.id)
        messages.append(used(last, now, baseline))
        last = now
    return {
        "slug": tenant.slug,
        "wake_ms": round(wake_ms, 1),
        "wake": used(before, woken, baseline),
        "messages": messages,
    }


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1) if values else 0.0


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per group, median CPU ms: the wake, the first message after it, each later one."""
    groups = sorted(
        {g for r in rows for g in r["wake"]} | {g for r in rows for m in r["messages"] for g in m}
    )
    table: dict[str, dict[str, float]] = {}
    for group in groups:
        later = [m.get(group, 0.0) for r in rows for m in r["messages"][1:]]
        table[group] = {
            "wake": median_ms([r["wake"].get(group, 0.0) for r in rows]),
            "first_message": median_ms(
                [r["messages"][0].get(group, 0.0) for r in rows if r["messages"]]
            ),
            "later_message": median_ms(later),
        }
    return table


def print_report(rows: list[dict[str, Any]], table: dict[str, dict[str, float]]) -> None:
    waits = [r["wake_ms"] for r in rows]
    print(
        f"\n{len(rows)} wakes, one at a time: first answer p50 {statistics.median(waits):.0f} ms, "
        f"max {max(waits):.0f} ms"
    )
    print("\nCPU ms, medians (a message: one send, then both users sync)")
    print(f"{'process':<22} {'wake':>8} {'1st message':>12} {'later':>8}")
    totals: defaultdict[str, float] = defaultdict(float)
    for group, cells in sorted(table.items(), key=lambda kv: -kv[1]["wake"]):
        print(
            f"{group:<22} {cells['wake']:>8.1f} {cells['first_message']:>12.1f} "
            f"{cells['later_message']:>8.1f}"
        )
        for cell, value in cells.items():
            if group not in (SCRIPT, OTHERS):
                totals[cell] += value
    print(
        f"{'the platform, all':<22} {totals['wake']:>8.1f} {totals['first_message']:>12.1f} "
        f"{totals['later_message']:>8.1f}   (but the load generator and the other homeservers)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=10, help="tenants woken, one at a time")
    parser.add_argument("--idle-after", type=int, default=20, help="plan idle_after_seconds")
    parser.add_argument("--messages", type=int, default=5, help="messages after each wake")
    parser.add_argument(
        "--baseline", type=float, default=20.0, help="seconds measured with all asleep"
    )
    parser.add_argument("--quiet", type=float, default=2.0, help="pause before each wake, seconds")
    parser.add_argument("--tail", type=float, default=1.0, help="seconds after a wake's answer")
    args = parser.parse_args()
    if args.tenants < 1 or args.messages < 2:
        parser.error("--tenants ≥ 1 and --messages ≥ 2 (the first is reported apart)")
    return args


def main() -> int:
    args = parse_args()
    stop_on_sigterm()
    overrides = {k: v for k, v in os.environ.items() if k.startswith("C3_")}
    overrides["C3_BASE_DOMAIN"] = BASE_DOMAIN
    data_dir = Path(tempfile.mkdtemp(prefix="c3-wake-cost-"))
    with running_platform(overrides, data_dir, keep_data=False) as running:
        with running.api() as api:
            create_plan(api, args.idle_after)
        clients = ThreadClients(running)
        try:
            tenants = [
                provision_one(running, clients, f"wake-{n:03d}") for n in range(args.tenants + 1)
            ]
        finally:
            clients.close()
        asleep = wait_until_asleep(running, tenants, args.idle_after + 120)
        print(f"{len(tenants)} tenants provisioned, {asleep} asleep", flush=True)
        # What the platform uses with every tenant asleep (beat and the worker run two
        # tasks a second, the usage flush and the webhook dispatch): taken off what follows.
        quiet = snapshot(running, "")
        time.sleep(args.baseline)  # the measurement window itself
        baseline = {
            group: seconds / args.baseline
            for group, seconds in used(quiet, snapshot(running, "")).items()
            if group not in (WOKEN, SCRIPT)
        }
        print(
            "with every tenant asleep: "
            + ", ".join(f"{g} {r * 1000:.1f} ms/s" for g, r in sorted(baseline.items()) if r),
            flush=True,
        )
        rows = []
        with httpx.Client() as http:
            for tenant in tenants:
                row = measure(running, http, tenant, args, baseline)
                first = tenant is tenants[0]  # the platform's first wake: apart
                if first:
                    first_row = row
                else:
                    rows.append(row)
                top = sorted(row["wake"].items(), key=lambda kv: -kv[1])[:4]
                print(
                    f"  {tenant.slug}{' (the first: apart)' if first else ''}: first answer {row['wake_ms']:.0f} ms; wake CPU "
                    + ", ".join(f"{g} {s * 1000:.0f} ms" for g, s in top),
                    flush=True,
                )
    table = summarize(rows)
    print_report(rows, table)
    payload = {
        "args": vars(args),
        "cpus": os.cpu_count(),
        "baseline_cpu_s_per_s": baseline,
        "summary": table,
        "rows": rows,
    }
    path = write_results("wake-cost", payload | {"platforms_first_wake": first_row})
    print(f"\nresults written to {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
