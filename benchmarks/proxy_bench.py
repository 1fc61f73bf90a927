"""Proxy overhead benchmark: the same Matrix requests sent to a tenant's Synapse directly and
through the homeserver proxy, on a real platform started by ``c3 up``.

One run:

1. starts the platform (``tests.platform.start_platform``) in a temporary data directory, with
   ``C3_BASE_DOMAIN=c3.bench``, a random operator token and any ``C3_*`` settings of the caller
   passed through (nothing set: SQLite and an embedded Redis);
2. times a tenant's provisioning, from ``POST /v1/tenants`` to status ``active``;
3. creates a user and logs it in through the proxy to get an access token;
4. load-tests ``GET /_matrix/client/versions`` and an authenticated
   ``GET /_matrix/client/v3/account/whoami`` against Synapse directly and through the proxy,
   at each connection count, ``--reps`` times ``--duration`` seconds each, and keeps the median;
5. prints a table and writes it as JSON to ``benchmarks/results/<timestamp>.json``;
6. stops the platform, whatever happened.

The load comes from ``wrk`` when it is installed (``apt-get install wrk``), otherwise from an
aiohttp load generator running in its own process.

Usage (from the repository root)::

    .venv/bin/python benchmarks/proxy_bench.py [--duration 5] [--reps 3] [--no-wrk]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform as host_platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
sys.path.insert(0, str(REPO_ROOT))

from tests.platform import RunningPlatform, start_platform  # noqa: E402

BASE_DOMAIN = "c3.bench"
USERNAME = "bench"
PASSWORD = "bench-password-1"
POLL_INTERVAL_S = 0.05
PROVISION_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 10.0
WRK_THREADS = 1  # two cores: Synapse and the proxy need them more than the load generator
WRK_RESULT_TAG = "C3BENCH"


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    authenticated: bool


ENDPOINTS = (
    Endpoint("versions", "/_matrix/client/versions", authenticated=False),
    Endpoint("whoami", "/_matrix/client/v3/account/whoami", authenticated=True),
)
TARGETS = ("direct", "proxy")


@dataclass
class Sample:
    """One load run (or the median of several): throughput, latency and failures."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int  # connection errors and timeouts: requests that got no response


# Platform ------------------------------------------------------------------------------


def platform_overrides() -> dict[str, str]:
    """The caller's C3_* settings, plus the benchmark's base domain."""
    overrides = {k: v for k, v in os.environ.items() if k.startswith("C3_")}
    overrides["C3_BASE_DOMAIN"] = BASE_DOMAIN
    return overrides


def launch_platform(overrides: dict[str, str], data_dir: Path) -> RunningPlatform:
    """``start_platform``, and if it fails while ``c3 up`` still runs (it does not hand the
    process back then), interrupt that child so it stops everything it started."""
    try:
        return start_platform(overrides, data_dir, "c3op_bench_" + secrets.token_urlsafe(24))
    except BaseException:
        children = psutil.Process().children()
        for child in children:
            child.send_signal(signal.SIGINT)
        psutil.wait_procs(children, timeout=90)
        print(f"c3 up did not start; logs in {data_dir}", file=sys.stderr)
        raise


def provision_tenant(running: RunningPlatform, slug: str) -> tuple[dict[str, Any], float]:
    """Create a tenant; return it once active, with the seconds from POST to ``active``."""
    with running.api() as api:
        started = time.perf_counter()
        response = api.post("/v1/tenants", json={"slug": slug, "display_name": "Benchmark"})
        if response.status_code != 202:
            raise RuntimeError(f"POST /v1/tenants: {response.status_code} {response.text}")
        tenant_id = response.json()["id"]
        deadline = started + PROVISION_TIMEOUT_S
        while time.perf_counter() < deadline:
            tenant = api.get(f"/v1/tenants/{tenant_id}").json()
            if tenant["status"] == "active":
                return tenant, time.perf_counter() - started
            if tenant["status"] not in ("pending", "provisioning"):
                raise RuntimeError(f"tenant provisioning ended as {tenant['status']}: {tenant}")
            time.sleep(POLL_INTERVAL_S)
    raise RuntimeError(f"tenant not active after {PROVISION_TIMEOUT_S:.0f}s")


def login(proxy_base: str) -> str:
    """Log the benchmark user in through the proxy; return its access token."""
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": USERNAME},
        "password": PASSWORD,
    }
    response = httpx.post(f"{proxy_base}/_matrix/client/v3/login", json=body, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"login through the proxy: {response.status_code} {response.text}")
    return str(response.json()["access_token"])


def check_endpoints(bases: dict[str, str], token: str) -> None:
    """One request per target and endpoint, so a broken setup fails before any load."""
    for target, base in bases.items():
        for endpoint in ENDPOINTS:
            response = httpx.get(
                base + endpoint.path, headers=auth_headers(endpoint, token), timeout=30
            )
            if response.status_code != 200:
                raise RuntimeError(
                    f"{target} {endpoint.path}: {response.status_code} {response.text[:200]}"
                )


def auth_headers(endpoint: Endpoint, token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if endpoint.authenticated else {}


# Load generators -----------------------------------------------------------------------


def wrk_script(headers: dict[str, str]) -> str:
    """Lua for wrk: set the headers, and report exact figures as one JSON line when done."""
    lines = [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    lines.append(
        f"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{WRK_RESULT_TAG} {{"requests": %d, "duration_us": %d, "p50_us": %.1f, "p99_us": %.1f, '
    .. '"status_errors": %d, "socket_errors": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""
    )
    return "\n".join(lines)


def run_wrk(url: str, headers: dict[str, str], connections: int, duration: float) -> Sample:
    """One wrk run. wrk counts responses with status >= 400 as status errors."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(headers))
    try:
        argv = [
            "wrk",
            f"-t{min(WRK_THREADS, connections)}",
            f"-c{connections}",
            f"-d{duration:g}s",
            f"--timeout={REQUEST_TIMEOUT_S:g}s",
            "--latency",
            "-s",
            script.name,
            url,
        ]
        output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    line = next((ln for ln in output.splitlines() if ln.startswith(WRK_RESULT_TAG)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    result = json.loads(line.removeprefix(WRK_RESULT_TAG))
    seconds = result["duration_us"] / 1e6
    return Sample(
        requests=result["requests"],
        rps=result["requests"] / seconds if seconds else 0.0,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        non_2xx=result["status_errors"],
        errors=result["socket_errors"],
    )


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def _python_load(
    url: str, headers: dict[str, str], connections: int, duration: float
) -> Sample:
    import aiohttp

    latencies: list[float] = []
    failures = {"non_2xx": 0, "errors": 0}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as session:

        async def client(deadline: float) -> None:
            while (sent := time.perf_counter()) < deadline:
                try:
                    async with session.get(url) as response:
                        await response.read()
                except (aiohttp.ClientError, TimeoutError):
                    failures["errors"] += 1
                    continue
                latencies.append(time.perf_counter() - sent)
                if not 200 <= response.status < 300:
                    failures["non_2xx"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(started + duration) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return Sample(
        requests=len(latencies),
        rps=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        **failures,
    )


def python_load(url: str, headers: dict[str, str], connections: int, duration: float) -> Sample:
    """Entry point of the load-generator process: ``connections`` keep-alive clients."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_python_load(url, headers, connections, duration))


class LoadGenerator:
    """wrk when available, else ``python_load`` in a separate process."""

    def __init__(self, use_wrk: bool, pool: Executor | None) -> None:
        self.use_wrk = use_wrk
        self.pool = pool

    @property
    def name(self) -> str:
        return "wrk" if self.use_wrk else "python-aiohttp"

    def run(self, url: str, headers: dict[str, str], connections: int, duration: float) -> Sample:
        if self.use_wrk:
            return run_wrk(url, headers, connections, duration)
        assert self.pool is not None
        return self.pool.submit(python_load, url, headers, connections, duration).result()


@contextmanager
def load_generator(prefer_wrk: bool) -> Iterator[LoadGenerator]:
    if prefer_wrk and shutil.which("wrk"):
        yield LoadGenerator(use_wrk=True, pool=None)
        return
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        yield LoadGenerator(use_wrk=False, pool=pool)


# Measuring -----------------------------------------------------------------------------


def median_sample(samples: list[Sample]) -> Sample:
    """Median throughput and latencies over repetitions; failures summed over all of them."""
    return Sample(
        requests=sum(s.requests for s in samples),
        rps=statistics.median(s.rps for s in samples),
        p50_ms=statistics.median(s.p50_ms for s in samples),
        p99_ms=statistics.median(s.p99_ms for s in samples),
        non_2xx=sum(s.non_2xx for s in samples),
        errors=sum(s.errors for s in samples),
    )


def measure(
    generator: LoadGenerator,
    bases: dict[str, str],
    token: str,
    endpoint: Endpoint,
    connections: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Warm both targets up, then alternate direct and proxy runs, ``args.reps`` each."""
    headers = auth_headers(endpoint, token)
    urls = {target: bases[target] + endpoint.path for target in TARGETS}
    if args.warmup > 0:
        for target in TARGETS:
            generator.run(urls[target], headers, connections, args.warmup)
    reps: dict[str, list[Sample]] = {target: [] for target in TARGETS}
    for rep in range(args.reps):
        for target in TARGETS:
            sample = generator.run(urls[target], headers, connections, args.duration)
            reps[target].append(sample)
            print(
                f"  {endpoint.name:8} c={connections:<3} rep {rep + 1}/{args.reps} {target:6} "
                f"{sample.rps:8.0f} req/s  p50 {sample.p50_ms:7.2f} ms  "
                f"p99 {sample.p99_ms:7.2f} ms  non-2xx {sample.non_2xx}  errors {sample.errors}",
                flush=True,
            )
    return {
        "endpoint": endpoint.name,
        "path": endpoint.path,
        "connections": connections,
        **{target: asdict(median_sample(reps[target])) for target in TARGETS},
        "reps": {target: [asdict(s) for s in reps[target]] for target in TARGETS},
    }


# Reporting -----------------------------------------------------------------------------

COLUMNS = (
    ("endpoint", "{:<8}"),
    ("conns", "{:>5}"),
    ("direct req/s", "{:>12}"),
    ("proxy req/s", "{:>11}"),
    ("proxy/direct", "{:>12}"),
    ("direct p50/p99 ms", "{:>17}"),
    ("proxy p50/p99 ms", "{:>16}"),
    ("added p50 ms", "{:>12}"),
    ("non-2xx d/p", "{:>11}"),
    ("errors d/p", "{:>10}"),
)


def table_row(row: dict[str, Any]) -> list[str]:
    direct, proxy = row["direct"], row["proxy"]
    ratio = proxy["rps"] / direct["rps"] if direct["rps"] else math.nan
    return [
        row["endpoint"],
        str(row["connections"]),
        f"{direct['rps']:.0f}",
        f"{proxy['rps']:.0f}",
        f"{ratio:.2f}",
        f"{direct['p50_ms']:.2f}/{direct['p99_ms']:.2f}",
        f"{proxy['p50_ms']:.2f}/{proxy['p99_ms']:.2f}",
        f"{proxy['p50_ms'] - direct['p50_ms']:+.2f}",
        f"{direct['non_2xx']}/{proxy['non_2xx']}",
        f"{direct['errors']}/{proxy['errors']}",
    ]


def render_table(report: dict[str, Any]) -> str:
    header = "  ".join(fmt.format(name) for name, fmt in COLUMNS)
    lines = [header, "-" * len(header)]
    for row in report["results"]:
        cells = table_row(row)
        lines.append(
            "  ".join(fmt.format(cell) for (_, fmt), cell in zip(COLUMNS, cells, strict=True))
        )
    settings = report["settings"]
    lines += [
        "",
        f"tenant provisioning (POST -> active): {report['provisioning_s']:.2f} s",
        f"load generator: {settings['load_generator']}; {settings['reps']} x "
        f"{settings['duration_s']:g} s per cell (median), {settings['warmup_s']:g} s warm-up; "
        f"database {settings['database']}, redis {settings['redis']}; "
        f"1-min load average before the run {report['machine']['loadavg_1m_before']:.2f} "
        f"on {report['machine']['cpus']} CPUs",
        "non-2xx and errors are totals over all reps"
        + (" (wrk counts status >= 400)" if settings["load_generator"] == "wrk" else ""),
    ]
    return "\n".join(lines)


def write_report(report: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{report['started_at'].replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


# Main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (5)")
    parser.add_argument("--reps", type=int, default=3, help="runs per cell; median kept (3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell (1)")
    parser.add_argument(
        "--connections", type=int, nargs="+", default=[1, 50], help="connection counts (1 50)"
    )
    parser.add_argument("--no-wrk", action="store_true", help="use the Python load generator")
    parser.add_argument("--keep-data", action="store_true", help="keep the platform data dir")
    return parser.parse_args()


def benchmark(running: RunningPlatform, generator: LoadGenerator, args: argparse.Namespace) -> dict:
    slug = "bench-" + secrets.token_hex(3)
    tenant, provisioning_s = provision_tenant(running, slug)
    print(f"tenant {slug} active after {provisioning_s:.2f} s", flush=True)
    running.create_user(tenant["id"], USERNAME, PASSWORD)
    bases = {
        "direct": f"http://127.0.0.1:{running.homeserver_port(tenant['id'])}",
        "proxy": f"{running.proxy_url}/t/{slug}",
    }
    token = login(bases["proxy"])
    check_endpoints(bases, token)
    print(f"direct {bases['direct']}  proxy {bases['proxy']}  ({generator.name})", flush=True)
    results = [
        measure(generator, bases, token, endpoint, connections, args)
        for endpoint in ENDPOINTS
        for connections in args.connections
    ]
    return {"provisioning_s": provisioning_s, "results": results}


def exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends the run like Ctrl-C does: through the ``finally`` that stops the platform."""
    sys.exit(128 + signum)


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    load_before = os.getloadavg()[0]
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    overrides = platform_overrides()
    data_dir = Path(tempfile.mkdtemp(prefix="c3-bench-"))
    print(f"starting the platform in {data_dir} ...", flush=True)
    running = launch_platform(overrides, data_dir)
    failed = True
    try:
        with load_generator(prefer_wrk=not args.no_wrk) as generator:
            measured = benchmark(running, generator, args)
        failed = False
    except BaseException:
        print("benchmark failed; platform logs:\n" + running.log_tail(), file=sys.stderr)
        raise
    finally:
        code = running.stop()
        print(f"platform stopped (exit {code})", flush=True)
        if failed or args.keep_data:
            print(f"data kept in {data_dir}", flush=True)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)

    report = {
        "started_at": started_at,
        "settings": {
            "duration_s": args.duration,
            "reps": args.reps,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "load_generator": generator.name,
            "database": "external" if "C3_DATABASE_URL" in overrides else "sqlite",
            "redis": "external" if "C3_REDIS_URL" in overrides else "embedded",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": host_platform.platform(),
            "loadavg_1m_before": load_before,
        },
        **measured,
    }
    print("\n" + render_table(report))
    print(f"\nresults written to {write_report(report).relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
