"""Parked long-polls: what 10,000 ``/sync`` requests waiting in the proxy cost in memory, what a
normal request meanwhile waits, and whether the memory comes back once the polls end.

One run, no platform and no Synapse (neither is what is measured):

1. raises this process's file limit (``RLIMIT_NOFILE``; the children inherit it): 10,000
   parked polls are 10,000 client and 10,000 upstream connections;
2. starts a **parking homeserver** in its own process: ``/sync`` answers only when told to
   (or at its ``timeout``), anything else at once; it counts what it holds;
3. publishes ``--tenants`` routes to it in a fresh Redis namespace and starts ``c3 proxy``
   (metering on, as in production) and, if installed, nginx (1 worker) proxying the same
   ``/t/<slug>/`` prefixes, as the yardstick;
4. per target: RSS before; then ``--polls`` long-polls (``/sync?timeout=120000&since=…``)
   spread round-robin over the tenants, opened in steps of 1,000, RSS after each step once
   the homeserver holds them all; a normal request's p50/p99 (``/versions``, wrk or the Python
   client, ``--probe-connections`` connections) with the polls parked and without; then the
   homeserver answers every poll, the clients read their answers (RSS) and hang up (RSS);
5. prints a table and writes ``benchmarks/results/longpoll-<UTC timestamp>.json``.

Usage (from the repository root)::

    .venv/bin/python benchmarks/longpoll_bench.py [--polls 10000] [--tenants 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "services"))

from benchmarks.harness import stop_on_sigterm, write_results  # noqa: E402
from benchmarks.nginx import INSTALL_HINT, nginx_binary, running_nginx  # noqa: E402
from c3.local_run import free_port  # noqa: E402
from platform_core.redis import keys_for  # noqa: E402
from platform_core.routes import Route, publish_route  # noqa: E402
from platform_core.settings import Settings  # noqa: E402
from tests.helpers.platform import stop_process  # noqa: E402

STEP = 1000
POLL_TIMEOUT_MS = 120_000
FILE_LIMIT = 65_536

# The parking homeserver: aiohttp in its own process. /sync waits for /_bench/release (or its
# timeout); /_bench/parked says how many wait; anything else answers at once.
PARKING_HOMESERVER = r"""
import asyncio, sys
from aiohttp import web
release = asyncio.Event()
parked = 0
async def handle(request):
    global parked
    path = request.path
    if path == "/_bench/parked":
        return web.json_response({"parked": parked})
    if path == "/_bench/release":
        release.set()
        return web.json_response({"released": parked})
    if path == "/_bench/rearm":
        release.clear()
        return web.json_response({})
    if path.endswith("/sync"):
        parked += 1
        try:
            timeout = int(request.query.get("timeout", "0")) / 1000
            await asyncio.wait_for(release.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            parked -= 1
        return web.json_response({"next_batch": "s1", "rooms": {}})
    return web.json_response({"versions": ["v1.11"]})
app = web.Application()
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, backlog=8192)
"""


def raise_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (FILE_LIMIT, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
            return wanted
        except (ValueError, OSError):
            continue
    return soft


def rss_bytes(pid: int) -> int:
    """Resident set of ``pid`` and its children (nginx: master + worker)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(c) for c in children.read_text().split()]
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


@contextmanager
def child(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        stop_process(process, 20, signal.SIGINT)


# Clients ---------------------------------------------------------------------------------


class Parker:
    """Long-poll clients on raw connections (cheap: 10,000 of them in this process)."""

    def __init__(self, port: int, slugs: list[str]) -> None:
        self.port = port
        self.slugs = slugs
        self.writers: list[asyncio.StreamWriter] = []
        self.answers: list[asyncio.Task[int]] = []

    async def open(self, count: int, at_once: int = 100) -> None:
        """``count`` more polls, ``at_once`` connections at a time (a burst of a thousand
        SYNs overflows loopback's accept queues on a busy machine)."""
        start = len(self.writers)
        for first in range(start, start + count, at_once):
            batch = range(first, min(first + at_once, start + count))
            for writer, answer in await asyncio.gather(*(self._one(i) for i in batch)):
                self.writers.append(writer)
                self.answers.append(answer)

    def answered_early(self) -> list[int]:
        """Statuses of polls answered while they should be parked (refused: 429, 503...)."""
        return [a.result() for a in self.answers if a.done() and not a.exception()]

    async def _one(self, index: int) -> tuple[asyncio.StreamWriter, asyncio.Task[int]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        slug = self.slugs[index % len(self.slugs)]
        writer.write(
            f"GET /t/{slug}/_matrix/client/v3/sync?timeout={POLL_TIMEOUT_MS}&since=s0 HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAuthorization: Bearer bench-{index}\r\n\r\n".encode()
        )
        return writer, asyncio.ensure_future(self._status(reader))

    @staticmethod
    async def _status(reader: asyncio.StreamReader) -> int:
        line = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        return int(line.split()[1]) if line else 0

    async def answered(self) -> list[int]:
        return list(await asyncio.gather(*self.answers))

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers, self.answers = [], []


def probe(url: str, connections: int, duration: int) -> dict[str, float]:
    """p50/p99 of ``/versions`` with wrk (else a small Python client)."""
    if shutil.which("wrk"):
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {**_wrk_latency(out), "generator": "wrk"}  # type: ignore[dict-item]
    return asyncio.run(_python_probe(url, connections, duration))


def _wrk_latency(out: str) -> dict[str, float]:
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    found: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            value = parts[1]
            unit = next(u for u in ("us", "ms", "s") if value.endswith(u))
            found["p" + parts[0].rstrip("%") + "_ms"] = float(value[: -len(unit)]) * units[unit]
        if line.startswith("Requests/sec:"):
            found["rps"] = float(parts[1])
    return found


async def _python_probe(url: str, connections: int, duration: int) -> dict[str, Any]:
    latencies: list[float] = []
    deadline = time.monotonic() + duration
    async with httpx.AsyncClient(timeout=30) as client:

        async def loop() -> None:
            while time.monotonic() < deadline:
                began = time.perf_counter()
                (await client.get(url)).raise_for_status()
                latencies.append((time.perf_counter() - began) * 1000)

        await asyncio.gather(*(loop() for _ in range(connections)))
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        "rps": len(latencies) / duration,
        "generator": "httpx",
    }


# Measuring -------------------------------------------------------------------------------


def parked_upstream(homeserver: str) -> int:
    return int(httpx.get(f"{homeserver}/_bench/parked", timeout=10).json()["parked"])


async def measure_target(
    name: str, pid: int, port: int, slugs: list[str], homeserver: str, args: argparse.Namespace
) -> dict[str, Any]:
    versions = f"http://127.0.0.1:{port}/t/{slugs[0]}/_matrix/client/versions"
    await asyncio.to_thread(
        probe, versions, args.probe_connections, 1
    )  # warm-up: connections, caches, the allocator
    idle = await asyncio.to_thread(probe, versions, args.probe_connections, args.probe_seconds)
    rss_before = rss_bytes(pid)
    print(f"{name}: RSS {rss_before / 2**20:.1f} MiB before; /versions idle {idle}", flush=True)
    await asyncio.to_thread(httpx.get, f"{homeserver}/_bench/rearm", timeout=10)
    parker = Parker(port, slugs)
    steps = []
    while len(parker.writers) < args.polls:
        await parker.open(min(STEP, args.polls - len(parker.writers)))
        expected = len(parker.writers)
        await asyncio.to_thread(
            wait_until,
            lambda: parked_upstream(homeserver) + len(parker.answered_early()) >= expected,  # noqa: B023
            120,
            f"{expected} polls parked at the homeserver",
        )
        if early := parker.answered_early():
            print(f"  {len(early)} polls answered instead of parked: {sorted(set(early))}")
        rss = rss_bytes(pid)
        steps.append({"parked": expected, "rss": rss})
        print(
            f"  {expected:6} parked: RSS {rss / 2**20:7.1f} MiB "
            f"({(rss - rss_before) / expected:7.0f} B per poll)",
            flush=True,
        )
    busy = await asyncio.to_thread(probe, versions, args.probe_connections, args.probe_seconds)
    print(f"  /versions with {args.polls} parked: {busy}", flush=True)
    await asyncio.to_thread(httpx.get, f"{homeserver}/_bench/release", timeout=30)
    statuses = await parker.answered()
    await asyncio.to_thread(wait_until, lambda: parked_upstream(homeserver) == 0, 60, "release")
    await asyncio.sleep(1)
    rss_answered = rss_bytes(pid)
    await parker.close()
    # The server notices the hang-ups; the upstream connections the polls left idle close after
    # the pool's keep-alive (5 s, looked at as often), and c3 proxy gives memory back once the
    # polls have been gone 12 s (checked every 5 s: heap.HeapTrimmer), and once more a minute
    # later (metering's whoami of each first-seen token holds memory a while): 100 s.
    await asyncio.sleep(100)
    rss_closed = rss_bytes(pid)
    full = steps[-1]["rss"]
    per_thousand = (full - rss_before) / (args.polls / 1000)
    print(
        f"  answered ({sum(s == 200 for s in statuses)} x 200): RSS {rss_answered / 2**20:.1f} "
        f"MiB; clients gone: {rss_closed / 2**20:.1f} MiB",
        flush=True,
    )
    return {
        "target": name,
        "rss_before": rss_before,
        "steps": steps,
        "rss_per_1000_parked": per_thousand,
        "bytes_per_parked_poll": per_thousand / 1000,
        "rss_after_answers": rss_answered,
        "rss_after_clients_left": rss_closed,
        "returned_pct": 100 * (full - rss_closed) / (full - rss_before) if full > rss_before else 0,
        "answered_200": sum(s == 200 for s in statuses),
        "probe_idle": idle,
        "probe_parked": busy,
    }


def render(report: dict[str, Any]) -> str:
    mib = 2**20
    header = (
        f"{'target':8} {'RSS before':>10} {'RSS parked':>10} {'per 1000':>9} {'per poll':>9} "
        f"{'answered':>9} {'clients gone':>12} {'returned':>8} {'p50/p99 idle ms':>16} "
        f"{'p50/p99 parked ms':>18}"
    )
    lines = [header, "-" * len(header)]
    for row in report["results"]:
        idle, busy = row["probe_idle"], row["probe_parked"]
        lines.append(
            f"{row['target']:8} {row['rss_before'] / mib:9.1f}M {row['steps'][-1]['rss'] / mib:9.1f}M "
            f"{row['rss_per_1000_parked'] / mib:8.2f}M {row['bytes_per_parked_poll'] / 1024:7.1f}KB "
            f"{row['rss_after_answers'] / mib:8.1f}M {row['rss_after_clients_left'] / mib:11.1f}M "
            f"{row['returned_pct']:7.0f}% "
            f"{idle['p50_ms']:7.2f}/{idle['p99_ms']:<8.2f} {busy['p50_ms']:8.2f}/{busy['p99_ms']:<8.2f}"
        )
    lines.append(
        f"{report['polls']} polls over {report['tenants']} tenants; probe: GET /versions, "
        f"{report['probe_connections']} connections, {report['probe_seconds']} s "
        f"({report['results'][0]['probe_idle']['generator']}); file limit {report['file_limit']}; "
        f"1-min load before {report['loadavg_1m_before']:.2f} on {os.cpu_count()} CPUs"
    )
    return "\n".join(lines)


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    namespace = "c3lp" + secrets.token_hex(4)
    settings = Settings(redis_url=args.redis_url, redis_namespace=namespace)
    keys = keys_for(settings)
    client = redis.Redis.from_url(args.redis_url)
    slugs = [f"lp{i:04d}" for i in range(args.tenants)]
    hs_port, proxy_port = free_port(), free_port()
    homeserver = f"http://127.0.0.1:{hs_port}"
    env = {
        **os.environ,
        "C3_MODE": "local",
        "C3_DATA_DIR": str(work),
        "C3_REDIS_URL": args.redis_url,
        "C3_REDIS_NAMESPACE": namespace,
        "C3_SECRET_KEY": secrets.token_urlsafe(32),
        "C3_BASE_DOMAIN": "c3.bench",
        "C3_PROXY_PORT": str(proxy_port),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "services"), str(REPO_ROOT)]),
    }
    results = []
    try:
        with child([sys.executable, "-c", PARKING_HOMESERVER, str(hs_port)], env, work / "hs.log"):
            wait_until(lambda: _up(f"{homeserver}/_bench/parked"), 30, "the parking homeserver")
            for slug in slugs:
                publish_route(
                    client,
                    keys,
                    Route(
                        tenant_id=str(uuid.uuid4()),
                        slug=slug,
                        server_name=f"{slug}.c3.bench",
                        upstream=homeserver,
                        status="active",
                        max_upload_bytes=10 * 2**20,
                        rate_per_second=1e6,
                        rate_burst=10**7,
                        max_concurrent=10**6,
                    ),
                )
            if "c3" in args.targets:
                argv = [sys.executable, "-m", "c3", "proxy"]
                # As the chart runs it (homeserver_proxy.heap: memory given back).
                proxy_env = {**env, "PYTHONMALLOC": "malloc"}
                with child(argv, proxy_env, work / "proxy.log") as proxy:
                    base = f"http://127.0.0.1:{proxy_port}/t/{slugs[0]}/_matrix/client/versions"
                    wait_until(lambda: _up(base), 60, "c3 proxy")
                    results.append(
                        await measure_target("c3", proxy.pid, proxy_port, slugs, homeserver, args)
                    )
            if "nginx" in args.targets:
                if nginx_binary() is None:
                    print(INSTALL_HINT + " (nginx column skipped)", flush=True)
                else:
                    port = free_port()
                    upstreams = dict.fromkeys(slugs, homeserver)
                    with running_nginx(upstreams, proxy_port=port) as nginx:
                        results.append(
                            await measure_target("nginx", nginx.pid, port, slugs, homeserver, args)
                        )
    finally:
        names = list(client.scan_iter(f"{namespace}:*"))
        if names:
            client.delete(*names)
    return {"results": results}


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=10_000, help="parked /sync (10000)")
    parser.add_argument("--tenants", type=int, default=100, help="tenants they spread over")
    parser.add_argument("--probe-connections", type=int, default=10)
    parser.add_argument("--probe-seconds", type=int, default=5)
    parser.add_argument("--targets", nargs="+", default=["c3", "nginx"], choices=["c3", "nginx"])
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("C3_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="a Redis the run gets a fresh namespace on (C3_REDIS_URL or loopback)",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    stop_on_sigterm()
    file_limit = raise_file_limit()
    if file_limit < 2 * args.polls + 500:
        # Each parked poll is two descriptors in the proxy (client, homeserver).
        fitting = (file_limit - 500) // 2
        print(
            f"the file limit is {file_limit} (hard limit; raising it needs CAP_SYS_RESOURCE): "
            f"parking {fitting} polls instead of {args.polls}",
            flush=True,
        )
        args.polls = fitting
    load_before = os.getloadavg()[0]
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    work = Path(tempfile.mkdtemp(prefix="c3-longpoll-"))
    try:
        measured = asyncio.run(run(args, work))
    finally:
        print(f"logs in {work}", flush=True)
    report = {
        "started_at": started_at,
        "polls": args.polls,
        "tenants": args.tenants,
        "probe_connections": args.probe_connections,
        "probe_seconds": args.probe_seconds,
        "file_limit": file_limit,
        "loadavg_1m_before": load_before,
        **measured,
    }
    print("\n" + render(report))
    path = write_results("longpoll", report)
    print(f"results written to {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
