"""Density benchmark: how many tenants with a real Synapse fit on this machine, and what their
clients see, with homeservers that sleep when idle and without (issue 16, "Density").

One run:

1. starts the platform (``c3 up`` through ``benchmarks.harness``) in a temporary data directory
   (the caller's ``C3_*`` settings pass through; nothing set: SQLite platform database, embedded
   Redis, the local backend, SQLite per tenant) and creates a plan ``density``; in the default
   (sleep) mode its limits carry ``idle_after_seconds`` (``--idle-after``), which turns sleeping
   on; ``--no-sleep`` leaves it out (always on);
2. provisions ``--tenants`` tenants on that plan through ``POST /v1/tenants``
   (``--parallel`` at a time), and for each one, once active: two users (tenant API), both
   signed in through the proxy (``/t/<slug>``), a room the first creates and the second joins.
   ``--no-sleep`` stops early when the next tenant would not fit in ``--memory-budget-gib``
   (all homeservers' plus the platform's RSS, one more homeserver estimated at the largest
   seen), or when the machine's available memory would drop below 1 GiB: "as many as fit";
3. sleep mode: waits until the tenants show ``homeserver.state == "asleep"`` in the API (the
   sleep contract), at most ``--idle-after`` + 120 s, and says how many did;
4. the workload: ``--rounds`` rounds of ``--round-seconds``; each round a rotating
   ``--active-share`` of the tenants is active (the next slice each round, so in sleep mode
   each was asleep): its two clients both start with a ``/sync`` at once — the **wake latency**
   is from that first request to the tenant's first answer — then each sends a message and
   syncs every ``--interval`` seconds until the round ends; finally each syncs until it has seen
   every message its peer sent (at most 15 s). Counted: every send's latency, every 5xx answer,
   every request that got no answer (connection error, timeout) and every message sent (200)
   that the peer never saw ("lost");
5. memory: at the end of each round, the RSS and PSS (``/proc/<pid>/smaps_rollup``) of every
   tenant homeserver process and of the platform's processes (``c3 up`` and its children);
6. prints a table, writes ``benchmarks/results/density-<mode>-<UTC stamp>.json``, stops the
   platform (also on failure or Ctrl-C), which stops every homeserver.

Usage (from the repository root)::

    .venv/bin/python benchmarks/density_bench.py --tenants 1000            # sleeping on
    .venv/bin/python benchmarks/density_bench.py --no-sleep --tenants 100 --memory-budget-gib 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform as host_platform
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import running_platform, stop_on_sigterm  # noqa: E402
from tests.helpers.platform import RunningPlatform  # noqa: E402

BASE_DOMAIN = "c3.bench"
PLAN = "density"
PROVISION_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 60.0
CATCH_UP_S = 15.0
MIN_AVAILABLE_BYTES = 1024**3
MIB = 1024 * 1024
# Each sync returns up to this many timeline events per room: nothing a peer sent is skipped.
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 200}}})


# Memory -----------------------------------------------------------------------------------


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


def homeserver_pids(data_dir: Path) -> list[int]:
    """Every running tenant homeserver of this platform (its config is under the data dir)."""
    root = str(data_dir / "homeservers")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "synapse.app.homeserver" in cmdline and any(a.startswith(root) for a in cmdline):
            found.append(proc.pid)
    return found


def platform_pids(running: RunningPlatform, exclude: set[int]) -> list[int]:
    """``c3 up`` and its descendants (API, proxy, worker, beat, Redis), not homeservers."""
    try:
        root = psutil.Process(running.process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    return [p.pid for p in tree if p.pid not in exclude]


def memory_sample(running: RunningPlatform) -> dict[str, Any]:
    homeservers = homeserver_pids(running.data_dir)
    platform = platform_pids(running, set(homeservers))
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
    }


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


def provision_all(
    running: RunningPlatform, args: argparse.Namespace, samples: list[dict[str, Any]]
) -> tuple[list[Tenant], str]:
    """Provision and set up tenants, ``args.parallel`` in flight; returns them and why it
    stopped ("all", or what memory limit)."""
    tenants: list[Tenant] = []
    stopped = "all"
    pending: dict[str, str] = {}  # id -> slug
    posted = 0
    started = time.perf_counter()
    with running.api() as api, httpx.Client() as http:
        while True:
            while stopped == "all" and posted < args.tenants and len(pending) < args.parallel:
                limit = room_for_one_more(running, args, len(pending))
                if limit is not None:
                    stopped = limit
                    break
                slug = f"dens-{posted:04d}"
                pending[post_tenant(api, slug)] = slug
                posted += 1
            if not pending:
                return tenants, stopped
            time.sleep(0.2)  # polling interval of the API, as provisioning_bench does
            for tenant_id, slug in list(pending.items()):
                if tenant_view(api, tenant_id)["status"] != "active":
                    continue
                del pending[tenant_id]
                tenant = Tenant(tenant_id, slug, f"{running.proxy_url}/t/{slug}")
                set_up_tenant(api, http, tenant)
                tenants.append(tenant)
                if len(tenants) % 10 == 0:
                    sample = memory_sample(running)
                    samples.append({"phase": "provisioning", **sample})
                    print(
                        f"  {len(tenants)} tenants up after {time.perf_counter() - started:.0f} s;"
                        f" homeservers {sample['homeservers_rss'] / MIB:.0f} MiB RSS,"
                        f" platform {sample['platform_rss'] / MIB:.0f} MiB",
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
    server_errors: int = 0  # 5xx answers
    no_answer: int = 0  # connection errors and timeouts
    lost_messages: int = 0  # sent (200) but never seen by the peer
    send_ms: list[float] = field(default_factory=list)
    wake_ms: list[float] = field(default_factory=list)
    wake_from: list[str | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def request(
    http: httpx.AsyncClient, counts: Counts, method: str, url: str, token: str, **kw: Any
) -> httpx.Response | None:
    counts.requests += 1
    try:
        response = await http.request(
            method, url, headers={"Authorization": f"Bearer {token}"}, **kw
        )
    except httpx.HTTPError as exc:
        counts.no_answer += 1
        counts.errors.append(f"{method} {url}: {type(exc).__name__}")
        return None
    if response.status_code >= 500:
        counts.server_errors += 1
        counts.errors.append(f"{method} {url}: {response.status_code} {response.text[:120]}")
    return response


async def sync(http: httpx.AsyncClient, counts: Counts, tenant: Tenant, client: Client) -> bool:
    params = {"timeout": "0", "filter": SYNC_FILTER}
    if client.since:
        params["since"] = client.since
    response = await request(
        http, counts, "GET", f"{tenant.base_url}/_matrix/client/v3/sync", client.token,
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
        http, counts, "PUT", url, client.token, json={"msgtype": "m.text", "body": "density"}
    )
    if response is not None and response.status_code == 200:
        counts.send_ms.append((time.perf_counter() - started) * 1000)
        client.sent.append(response.json()["event_id"])


async def active_tenant(
    http: httpx.AsyncClient, counts: Counts, tenant: Tenant, seconds: float, interval: float
) -> None:
    """Both clients at once: a first sync (the wake), then send + sync until the round ends,
    then catch up on everything the peer sent."""
    first_answer = asyncio.get_running_loop().create_future()
    started = time.perf_counter()

    async def first_sync(client: Client) -> None:
        await sync(http, counts, tenant, client)
        if not first_answer.done():
            first_answer.set_result(time.perf_counter())

    await asyncio.gather(*(first_sync(c) for c in tenant.clients))
    counts.wake_ms.append((first_answer.result() - started) * 1000)
    deadline = time.perf_counter() + seconds

    async def loop(client: Client) -> None:
        while time.perf_counter() < deadline:
            await send(http, counts, tenant, client)
            await sync(http, counts, tenant, client)
            await asyncio.sleep(interval)  # pacing of a chatting user, not synchronisation

    await asyncio.gather(*(loop(c) for c in tenant.clients))
    for client, peer in (tenant.clients, tenant.clients[::-1]):
        catch_up = time.perf_counter() + CATCH_UP_S
        while not set(peer.sent) <= client.seen and time.perf_counter() < catch_up:
            await sync(http, counts, tenant, client)
        counts.lost_messages += len(set(peer.sent) - client.seen)
        peer.sent.clear()
        client.seen.clear()


async def workload(
    running: RunningPlatform, tenants: list[Tenant], args: argparse.Namespace
) -> tuple[Counts, list[dict[str, Any]]]:
    counts = Counts()
    samples: list[dict[str, Any]] = []
    per_round = max(1, round(len(tenants) * args.active_share))
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as http:
        for n in range(args.rounds):
            active = [tenants[(n * per_round + k) % len(tenants)] for k in range(per_round)]
            with running.api() as api:
                states = [homeserver_state(tenant_view(api, t.id)) for t in active]
            counts.wake_from.extend(states)
            started = time.perf_counter()
            await asyncio.gather(
                *(active_tenant(http, counts, t, args.round_seconds, args.interval) for t in active)
            )
            sample = memory_sample(running)
            samples.append({"phase": f"round {n + 1}", **sample})
            asleep = sum(1 for s in states if s == "asleep")
            print(
                f"  round {n + 1}/{args.rounds}: {len(active)} active ({asleep} were asleep), "
                f"{time.perf_counter() - started:.0f} s; homeservers running "
                f"{sample['homeservers_running']}, {sample['homeservers_rss'] / MIB:.0f} MiB RSS",
                flush=True,
            )
    return counts, samples


# Report -----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def summarize(
    args: argparse.Namespace,
    tenants: list[Tenant],
    stopped: str,
    asleep: int | None,
    counts: Counts,
    samples: list[dict[str, Any]],
) -> dict[str, Any]:
    rounds = [s for s in samples if s["phase"].startswith("round")]
    peak = max(rounds, key=lambda s: s["homeservers_rss"] + s["platform_rss"], default={})
    return {
        "mode": "no-sleep" if args.no_sleep else "sleep",
        "tenants_requested": args.tenants,
        "tenants": len(tenants),
        "stopped_by": stopped,
        "asleep_before_workload": asleep,
        "active_per_round": max(1, round(len(tenants) * args.active_share)),
        "peak": peak,
        "mean_homeservers_rss": statistics.fmean(s["homeservers_rss"] for s in rounds)
        if rounds
        else None,
        "wake_p50_ms": percentile(counts.wake_ms, 0.5),
        "wake_p95_ms": percentile(counts.wake_ms, 0.95),
        "wake_max_ms": max(counts.wake_ms, default=None),
        "woken_from": dict(Counter(str(state) for state in counts.wake_from)),
        "send_count": len(counts.send_ms),
        "send_p50_ms": percentile(counts.send_ms, 0.5),
        "send_p99_ms": percentile(counts.send_ms, 0.99),
        "requests": counts.requests,
        "server_errors": counts.server_errors,
        "no_answer": counts.no_answer,
        "lost_messages": counts.lost_messages,
        "first_errors": counts.errors[:20],
    }


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_report(s: dict[str, Any]) -> None:
    peak = s["peak"] or {}
    print(f"\nDensity, {s['mode']}: {s['tenants']} tenants (asked {s['tenants_requested']}, "
          f"stopped by: {s['stopped_by']}), {s['active_per_round']} active per round")  # fmt: skip
    if s["asleep_before_workload"] is not None:
        print(f"  asleep before the workload: {s['asleep_before_workload']}/{s['tenants']}")
    if peak:
        print(
            f"  peak: {peak['homeservers_running']} homeservers running, "
            f"{peak['homeservers_rss'] / MIB:.0f} MiB RSS ({peak['homeservers_pss'] / MIB:.0f} "
            f"PSS); platform {peak['platform_rss'] / MIB:.0f} MiB RSS "
            f"({peak['platform_pss'] / MIB:.0f} PSS)"
        )
    print(
        f"  first request → first answer (wake) p50/p95/max: {fmt_ms(s['wake_p50_ms'])} / "
        f"{fmt_ms(s['wake_p95_ms'])} / {fmt_ms(s['wake_max_ms'])} ms; states before: "
        f"{s['woken_from']}"
    )
    print(
        f"  sends: {s['send_count']}, p50 {fmt_ms(s['send_p50_ms'])} ms, "
        f"p99 {fmt_ms(s['send_p99_ms'])} ms; requests {s['requests']}: "
        f"5xx {s['server_errors']}, no answer {s['no_answer']}, lost messages "
        f"{s['lost_messages']}"
    )
    for error in s["first_errors"][:5]:
        print(f"    {error}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument(
        "--no-sleep", action="store_true", help="sleeping off; as many tenants as fit"
    )
    parser.add_argument("--memory-budget-gib", type=float, default=8.0, help="--no-sleep only")
    parser.add_argument("--idle-after", type=int, default=30, help="plan idle_after_seconds")
    parser.add_argument("--parallel", type=int, default=4, help="tenants provisioning at once")
    parser.add_argument("--active-share", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--round-seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between sends")
    parser.add_argument("--keep-data", action="store_true")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    stop_on_sigterm()
    mode = "no-sleep" if args.no_sleep else "sleep"
    overrides = {k: v for k, v in os.environ.items() if k.startswith("C3_")}
    overrides["C3_BASE_DOMAIN"] = BASE_DOMAIN
    data_dir = Path(tempfile.mkdtemp(prefix=f"c3-density-{mode}-"))
    samples: list[dict[str, Any]] = []
    with running_platform(overrides, data_dir, keep_data=args.keep_data) as running:
        with running.api() as api:
            create_plan(api, None if args.no_sleep else args.idle_after)
        print(f"{mode}: provisioning up to {args.tenants} tenants", flush=True)
        tenants, stopped = provision_all(running, args, samples)
        samples.append({"phase": "provisioned", **memory_sample(running)})
        asleep = None
        if not args.no_sleep:
            print("waiting for the tenants to fall asleep", flush=True)
            asleep = wait_until_asleep(running, tenants, args.idle_after + 120)
            samples.append({"phase": "asleep", **memory_sample(running)})
        print(f"workload: {args.rounds} rounds of {args.round_seconds:.0f} s", flush=True)
        counts, round_samples = asyncio.run(workload(running, tenants, args))
        samples.extend(round_samples)
    summary = summarize(args, tenants, stopped, asleep, counts, samples)
    print_report(summary)
    report = {
        "started_at": datetime.now(UTC).isoformat(),
        "args": vars(args),
        "host": {
            "cpus": os.cpu_count(),
            "memory": psutil.virtual_memory().total,
            "python": host_platform.python_version(),
        },
        "summary": summary,
        "samples": samples,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"density-{mode}-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
