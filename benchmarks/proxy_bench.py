"""Proxy overhead benchmark: the same Matrix requests sent to a tenant's Synapse directly, through
the homeserver proxy, and through a second proxy with metering off, on a real platform started
by ``c3 up``.

One run:

1. starts the platform (``tests.platform.start_platform``) in a temporary data directory, with
   ``C3_BASE_DOMAIN=c3.bench``, a random operator token and any ``C3_*`` settings of the caller
   passed through (nothing set: SQLite and an embedded Redis);
2. times a tenant's provisioning, from ``POST /v1/tenants`` to status ``active``;
3. creates a user (without a message rate limit) and logs it in through the proxy to get an
   access token, and creates a room through the proxy;
4. starts a second proxy, ``c3 proxy --no-metering``, with the platform proxy's environment on
   another port; with ``--against REV_OR_DIR`` two more, ``c3 proxy`` (metering on) of this
   tree and of another (a git revision of this repository, or a ``services`` folder as it is,
   compiled modules and all), started alike and measured in the same reps: old against new,
   side by side;
5. starts nginx (Debian's package, 1 worker) twice when it is installed: as a reverse proxy to
   the same Synapse under the same ``/t/<slug>/`` prefix (the yardstick), and as a **static
   upstream** (``return 200``) that a second route of the tenant, and the nginx proxy, point at;
   and ``tcp_pipe.py`` (the **floor**: a pass-through TCP relay in Python on uvloop, no HTTP)
   in front of the Synapse and of the static upstream: what any Python proxy pays a request;
6. load-tests ``GET /_matrix/client/versions``, an authenticated
   ``GET /_matrix/client/v3/account/whoami`` (Synapse directly, the metered proxy, the
   unmetered proxy, nginx and the floor), a billable
   ``PUT .../send/m.room.message/<unique txn id>`` (the proxies only) and ``static``
   (``/versions`` from the static upstream: the proxies' own ceiling), at each connection count, ``--reps`` times ``--duration`` seconds each, targets
   alternating, and keeps the median; every run also reads the CPU time of the target's
   process(es) from ``/proc/<pid>/stat`` (CPU per request);
7. prints the tables (with the metering cost, 1 - metered/unmetered throughput, and the
   proxies against nginx: req/s, CPU per request, p99) and writes them as JSON to
   ``benchmarks/results/proxy-<UTC stamp>.json``;
8. stops nginx, the unmetered proxy and the platform, whatever happened.

The load comes from ``wrk`` when it is installed (``apt-get install wrk``), otherwise from an
aiohttp load generator running in its own process.

Usage (from the repository root)::

    .venv/bin/python benchmarks/proxy_bench.py [--duration 5] [--reps 3] [--no-wrk]
    .venv/bin/python benchmarks/proxy_bench.py --cells versions whoami --connections 50 \
        --reps 5 --against main~3
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
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import psutil
import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import (  # noqa: E402
    against_problem,
    other_services,
    running_platform,
    stop_on_sigterm,
    write_results,
)
from benchmarks.nginx import INSTALL_HINT, nginx_binary, running_nginx, tree_cpu_seconds  # noqa: E402
from c3.local_run import free_port  # noqa: E402
from platform_core.redis import RedisKeys  # noqa: E402
from platform_core.routes import Route, publish_route, slug_field  # noqa: E402
from tests.helpers.platform import RunningPlatform, poll, stop_process  # noqa: E402

BASE_DOMAIN = "c3.bench"
USERNAME = "bench"
PASSWORD = "bench-password-1"
ADMIN_USERNAME = "bench-admin"  # lifts the bench user's message rate limit (Synapse admin API)
POLL_INTERVAL_S = 0.05
PROVISION_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 10.0
WRK_THREADS = 1  # two cores: Synapse and the proxy need them more than the load generator
WRK_RESULT_TAG = "C3BENCH"
METERING_COST_TARGET_PCT = 5.0
SEND_BODY = b'{"msgtype":"m.text","body":"benchmark"}'
# The goals of issue 16 ("A hot path that costs a third"), printed with the cells that miss them.
CPU_PER_REQUEST_GOAL_US = 60.0
STATIC_CEILING_GOAL = 0.4  # x nginx's req/s, static upstream, most connections
P99_GOAL = 1.2  # x direct Synapse's p99, most connections


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str  # "{room}" stands for the benchmark room's (quoted) id
    authenticated: bool
    method: str = "GET"
    # The path ends with a transaction id: every request appends a unique one.
    unique_txn: bool = False
    direct: bool = True  # measured against Synapse directly too, not only through the proxies
    # Served by the static upstream (nginx ``return 200``) instead of Synapse: "direct" is
    # that upstream, the proxies and nginx reach it through a second route of the tenant.
    static: bool = False

    def targets(self) -> tuple[str, ...]:
        return TARGETS if self.direct else PROXY_TARGETS


ENDPOINTS = (
    Endpoint("versions", "/_matrix/client/versions", authenticated=False),
    Endpoint("whoami", "/_matrix/client/v3/account/whoami", authenticated=True),
    Endpoint(
        "send",
        "/_matrix/client/v3/rooms/{room}/send/m.room.message/",
        authenticated=True,
        method="PUT",
        unique_txn=True,
        direct=False,
    ),
    Endpoint("static", "/_matrix/client/versions", authenticated=False, static=True),
)
# "proxy" meters usage as in production; with ``--against``, "this" and "against" are two more
# ``c3 proxy``s, metering too, of this tree and of another (alike: both started the same way,
# neither the platform's); "proxy_unmetered" is ``c3 proxy --no-metering``; "nginx" is nginx
# (1 worker) as a reverse proxy to the same upstream, when installed; "floor" is
# ``tcp_pipe.py``, a pass-through TCP relay in Python on uvloop: what any Python proxy pays.
TARGETS = ("direct", "proxy", "this", "against", "proxy_unmetered", "nginx", "floor")
PROXY_TARGETS = ("proxy", "this", "against", "proxy_unmetered", "nginx")
# Whose sends the tenant's messages counter counts.
METERING_TARGETS = ("proxy", "this", "against")


@dataclass(frozen=True)
class LoadRequest:
    """What one load run sends, picklable for the Python load generator's process."""

    method: str
    url: str  # with ``txn_prefix``: each request appends ``<txn_prefix><client>.<n>``
    headers: dict[str, str]
    body: bytes | None = None
    txn_prefix: str | None = None


@dataclass
class Sample:
    """One load run (or the median of several): throughput, latency and failures."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int  # connection errors and timeouts: requests that got no response
    # CPU time of the target's process(es) per answered request (None: not measured).
    cpu_us: float | None = None


# Platform ------------------------------------------------------------------------------


def platform_overrides() -> dict[str, str]:
    """The caller's C3_* settings, plus the benchmark's base domain."""
    overrides = {k: v for k, v in os.environ.items() if k.startswith("C3_")}
    overrides["C3_BASE_DOMAIN"] = BASE_DOMAIN
    return overrides


BENCH_PLAN = "bench-unlimited"


def provision_tenant(running: RunningPlatform, slug: str) -> tuple[dict[str, Any], float]:
    """Create a tenant; return it once active, with the seconds from POST to ``active``."""
    with running.api() as api:
        # The proxy's per-tenant rate and concurrency limits would turn a load test into a
        # measurement of 429s: the benchmark tenant's plan lifts them (and nothing else).
        plan = api.post(
            "/v1/plans",
            json={
                "code": BENCH_PLAN,
                "name": "Benchmark (proxy limits lifted)",
                "currency": "EUR",
                "limits": {
                    "proxy_rate_per_second": 100_000,
                    "proxy_rate_burst": 1_000_000,
                    "proxy_max_concurrent": 100_000,
                },
            },
        )
        if plan.status_code not in (201, 409):
            raise RuntimeError(f"POST /v1/plans: {plan.status_code} {plan.text}")
        started = time.perf_counter()
        response = api.post(
            "/v1/tenants", json={"slug": slug, "display_name": "Benchmark", "plan": BENCH_PLAN}
        )
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


def lift_message_rate_limit(
    running: RunningPlatform, tenant_id: str, direct: str, user: str
) -> None:
    """Exempt ``user`` from Synapse's message rate limit (the plan allows 20/s, burst 200: the
    send endpoint would measure 429 answers). A homeserver admin made through the tenant API
    sets the override through Synapse's admin API, which the proxy never serves."""
    with running.api() as api:
        response = api.post(
            f"/v1/tenants/{tenant_id}/users",
            json={"username": ADMIN_USERNAME, "password": PASSWORD, "admin": True},
        )
        if response.status_code != 201:
            raise RuntimeError(f"creating the admin user: {response.status_code} {response.text}")
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": ADMIN_USERNAME},
        "password": PASSWORD,
    }
    response = httpx.post(f"{direct}/_matrix/client/v3/login", json=body, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"admin login: {response.status_code} {response.text}")
    admin_token = response.json()["access_token"]
    response = httpx.post(
        f"{direct}/_synapse/admin/v1/users/{quote(user, safe='')}/override_ratelimit",
        json={"messages_per_second": 0, "burst_count": 0},  # 0 = no limit
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=30,
    )
    if response.status_code != 200:
        raise RuntimeError(f"override_ratelimit: {response.status_code} {response.text}")


def create_room(proxy_base: str, token: str) -> str:
    """A private room of the benchmark user, created through the (metered) proxy."""
    response = httpx.post(
        f"{proxy_base}/_matrix/client/v3/createRoom",
        json={"preset": "private_chat", "name": "benchmark"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    if response.status_code != 200:
        raise RuntimeError(f"createRoom through the proxy: {response.status_code} {response.text}")
    return str(response.json()["room_id"])


def platform_proxy(running: RunningPlatform) -> psutil.Process:
    """The proxy process ``c3 up`` started."""
    for child in psutil.Process(running.process.pid).children():
        try:
            argv = child.cmdline()
            if argv[-3:] == ["-m", "c3", "proxy"]:
                return child
        except psutil.Error:
            continue
    raise RuntimeError("the platform's proxy process was not found among c3 up's children")


def platform_proxy_env(running: RunningPlatform) -> dict[str, str]:
    """The environment ``c3 up`` gave its proxy (it holds the embedded Redis URL, secrets...)."""
    return dict(platform_proxy(running).environ())


def publish_static_route(running: RunningPlatform, slug: str, static_url: str) -> str:
    """A second route of the benchmark tenant (same id and limits, slug ``<slug>-static``)
    to the static upstream; returns its slug. Not the provisioner's: nothing withdraws it
    until the platform's Redis goes away with the run."""
    env = platform_proxy_env(running)
    client = redis.Redis.from_url(env["C3_REDIS_URL"])
    keys = RedisKeys(env.get("C3_REDIS_NAMESPACE", "c3"))
    original = Route.from_json(client.hget(keys.routes, slug_field(slug)))  # type: ignore[arg-type]
    static_slug = f"{slug}-static"
    route = replace(
        original, slug=static_slug, server_name=f"{static_slug}.{BASE_DOMAIN}", upstream=static_url
    )
    publish_route(client, keys, route)
    client.close()
    return static_slug


@dataclass
class Targets:
    """Each target's base URL, and the process(es) whose CPU it costs, for the endpoints that
    Synapse answers and for the static upstream's."""

    bases: dict[str, str]
    static_bases: dict[str, str]
    pids: dict[str, int]
    static_pids: dict[str, int]

    def bases_of(self, endpoint: Endpoint) -> dict[str, str]:
        return self.static_bases if endpoint.static else self.bases

    def pids_of(self, endpoint: Endpoint) -> dict[str, int]:
        return self.static_pids if endpoint.static else self.pids

    def names(self, endpoint: Endpoint) -> tuple[str, ...]:
        bases = self.bases_of(endpoint)
        return tuple(t for t in endpoint.targets() if t in bases)


@contextmanager
def second_proxy(
    running: RunningPlatform, name: str, options: list[str], services: Path | None = None
) -> Iterator[tuple[str, int]]:
    """``c3 proxy <options>`` with the platform proxy's environment on a free port (of the
    ``services`` tree given, else this one); yields its base URL and pid and stops it on the
    way out, whatever happened."""
    env = platform_proxy_env(running)
    port = free_port()
    env["C3_PROXY_PORT"] = str(port)
    env.pop("C3_PROXY_PUBLIC_URL", None)
    if services is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(services), str(REPO_ROOT)])
    url = f"http://127.0.0.1:{port}"
    log_path = running.data_dir / "logs" / f"proxy-{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = ["c3", "proxy", *options]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", *command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us; we stop it (before the platform)
        )
    try:

        def healthy() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(command)} exited ({process.returncode}); see {log_path}"
                )
            try:
                return httpx.get(f"{url}/_c3/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        poll(healthy, timeout=60, what=" ".join(command))
        yield url, process.pid
    finally:
        code = stop_process(process, 15, signal.SIGINT)
        print(f"{name} proxy stopped (exit {code})", flush=True)


@contextmanager
def nginx_yardstick(slug: str, direct: str) -> Iterator[tuple[Any, Any]]:
    """nginx as a reverse proxy to the tenant's Synapse (and, for the static cell, to the
    static upstream) and nginx as the static upstream: two processes, so the proxy's CPU is
    its own. (None, None) without nginx."""
    if nginx_binary() is None:
        print(INSTALL_HINT + ": no nginx column, no static cell", flush=True)
        yield None, None
        return
    static_port = free_port()
    upstreams = {slug: direct, f"{slug}-static": f"http://127.0.0.1:{static_port}"}
    with (
        running_nginx({}, static_port=static_port) as static,
        running_nginx(upstreams, proxy_port=free_port()) as reverse,
    ):
        yield reverse, static


@contextmanager
def python_floor(upstream: str) -> Iterator[tuple[str, int]]:
    """``tcp_pipe.py`` in front of ``upstream`` (``http://host:port``) on a free port; yields
    its base URL and pid and stops it on the way out, whatever happened."""
    parts = urlsplit(upstream)
    assert parts.hostname is not None and parts.port is not None, upstream
    listen = free_port()
    script = str(REPO_ROOT / "benchmarks" / "tcp_pipe.py")
    process = subprocess.Popen(
        [sys.executable, script, str(listen), parts.hostname, str(parts.port)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches us; we stop it
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"tcp_pipe.py did not start (exit {process.wait()})")
        yield f"http://127.0.0.1:{listen}", process.pid
    finally:
        stop_process(process, 15, signal.SIGINT)


def usage_messages(running: RunningPlatform, tenant_id: str) -> int:
    with running.api() as api:
        response = api.get(f"/v1/tenants/{tenant_id}/usage")
        response.raise_for_status()
        return int(response.json()["totals"].get("messages", 0))


def auth_headers(endpoint: Endpoint, token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if endpoint.authenticated else {}


def load_request(endpoint: Endpoint, base: str, token: str) -> LoadRequest:
    """The request of one load run; a send gets a txn id prefix no other run uses."""
    headers = auth_headers(endpoint, token)
    if endpoint.method == "GET":
        return LoadRequest("GET", base + endpoint.path, headers)
    headers["Content-Type"] = "application/json"
    return LoadRequest(
        endpoint.method,
        base + endpoint.path,
        headers,
        body=SEND_BODY,
        txn_prefix=f"b{secrets.token_hex(4)}." if endpoint.unique_txn else None,
    )


def check_endpoints(targets: Targets, token: str, endpoints: list[Endpoint]) -> int:
    """One request per target and endpoint, so a broken setup fails before any load; returns
    how many messages went through the metering proxies."""
    sent = 0
    for endpoint in endpoints:
        for target in targets.names(endpoint):
            request = load_request(endpoint, targets.bases_of(endpoint)[target], token)
            url = request.url + (f"{request.txn_prefix}check" if request.txn_prefix else "")
            response = httpx.request(
                request.method, url, headers=request.headers, content=request.body, timeout=30
            )
            if response.status_code != 200:
                raise RuntimeError(
                    f"{target} {endpoint.method} {endpoint.path}: {response.status_code} "
                    f"{response.text[:200]}"
                )
            if target in METERING_TARGETS and endpoint.unique_txn:
                sent += 1
    return sent


# Load generators -----------------------------------------------------------------------


def wrk_script(request: LoadRequest) -> str:
    """Lua for wrk: set the method, headers and body, append a unique txn id to the path of
    every request when asked, and report exact figures as one JSON line when done."""
    lines = [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in request.headers.items()]
    lines.append(f"wrk.method = {json.dumps(request.method)}")
    if request.body is not None:
        lines.append(f"wrk.body = {json.dumps(request.body.decode())}")
    if request.txn_prefix is not None:
        # setup() runs in the main Lua state once per thread; each thread has its own state,
        # so its counter, and the thread number makes ids unique across threads.
        lines.append(
            f"""
local prefix = wrk.path .. {json.dumps(request.txn_prefix)}
local threads = 0
local counter = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end
function request()
  counter = counter + 1
  return wrk.format(nil, prefix .. thread_number .. "." .. counter)
end
"""
        )
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


def run_wrk(request: LoadRequest, connections: int, duration: float) -> Sample:
    """One wrk run. wrk counts responses with status >= 400 as status errors."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(request))
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
            request.url,
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


async def _python_load(request: LoadRequest, connections: int, duration: float) -> Sample:
    import aiohttp

    latencies: list[float] = []
    failures = {"non_2xx": 0, "errors": 0}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(
        connector=connector, headers=request.headers, timeout=timeout
    ) as session:

        async def client(number: int, deadline: float) -> None:
            url = request.url
            counter = 0
            while (sent := time.perf_counter()) < deadline:
                if request.txn_prefix is not None:
                    counter += 1
                    url = f"{request.url}{request.txn_prefix}{number}.{counter}"
                try:
                    async with session.request(request.method, url, data=request.body) as response:
                        await response.read()
                except (aiohttp.ClientError, TimeoutError):
                    failures["errors"] += 1
                    continue
                latencies.append(time.perf_counter() - sent)
                if not 200 <= response.status < 300:
                    failures["non_2xx"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(n, started + duration) for n in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return Sample(
        requests=len(latencies),
        rps=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        **failures,
    )


def python_load(request: LoadRequest, connections: int, duration: float) -> Sample:
    """Entry point of the load-generator process: ``connections`` keep-alive clients."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_python_load(request, connections, duration))


class LoadGenerator:
    """wrk when available, else ``python_load`` in a separate process."""

    def __init__(self, use_wrk: bool, pool: Executor | None) -> None:
        self.use_wrk = use_wrk
        self.pool = pool

    @property
    def name(self) -> str:
        return "wrk" if self.use_wrk else "python-aiohttp"

    def run(self, request: LoadRequest, connections: int, duration: float) -> Sample:
        if self.use_wrk:
            return run_wrk(request, connections, duration)
        assert self.pool is not None
        return self.pool.submit(python_load, request, connections, duration).result()


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
        cpu_us=statistics.median(cpus)
        if (cpus := [s.cpu_us for s in samples if s.cpu_us])
        else None,
    )


def metering_cost_pct(metered: dict[str, Any] | None, unmetered: dict[str, Any] | None) -> float:
    """1 - metered/unmetered throughput, in percent (negative: metered was faster)."""
    if not metered or not unmetered or not unmetered["rps"]:
        return math.nan
    return (1 - metered["rps"] / unmetered["rps"]) * 100


def paired_metering_cost_pct(metered: list[Sample], unmetered: list[Sample]) -> float:
    """Median over reps of 1 - metered/unmetered req/s of the same rep: the two runs of a rep
    are adjacent in time, so this is less sensitive to drift than the ratio of medians."""
    costs = [(1 - m.rps / u.rps) * 100 for m, u in zip(metered, unmetered, strict=True) if u.rps]
    return statistics.median(costs) if costs else math.nan


TARGET_LABELS = {
    "direct": "direct",
    "proxy": "metered",
    "this": "this",
    "against": "against",
    "proxy_unmetered": "unmetered",
    "nginx": "nginx",
    "floor": "floor",
}


def run_measured(
    generator: LoadGenerator,
    request: LoadRequest,
    connections: int,
    duration: float,
    pid: int | None,
) -> Sample:
    """One load run, with the CPU time ``pid`` (and its children) spent per answered request,
    from ``/proc/<pid>/stat``."""
    before = tree_cpu_seconds(pid) if pid is not None else 0.0
    sample = generator.run(request, connections, duration)
    if pid is not None and sample.requests:
        sample = replace(sample, cpu_us=(tree_cpu_seconds(pid) - before) / sample.requests * 1e6)
    return sample


def measure(
    generator: LoadGenerator,
    where: Targets,
    token: str,
    endpoint: Endpoint,
    connections: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Warm every target up, then run each ``args.reps`` times, targets alternating and their
    order reversed every other rep, so that drift weighs on all of them alike."""
    targets = where.names(endpoint)
    bases, pids = where.bases_of(endpoint), where.pids_of(endpoint)
    warmups: dict[str, Sample] = {}
    if args.warmup > 0:
        for target in targets:
            request = load_request(endpoint, bases[target], token)
            warmups[target] = generator.run(request, connections, args.warmup)
    reps: dict[str, list[Sample]] = {target: [] for target in targets}
    for rep in range(args.reps):
        for target in targets if rep % 2 == 0 else targets[::-1]:
            request = load_request(endpoint, bases[target], token)
            sample = run_measured(generator, request, connections, args.duration, pids.get(target))
            reps[target].append(sample)
            cpu = f"{sample.cpu_us:7.1f} us/req" if sample.cpu_us is not None else "-"
            print(
                f"  {endpoint.name:8} c={connections:<3} rep {rep + 1}/{args.reps} "
                f"{TARGET_LABELS[target]:9} {sample.rps:8.0f} req/s  p50 {sample.p50_ms:7.2f} ms  "
                f"p99 {sample.p99_ms:7.2f} ms  cpu {cpu}  non-2xx {sample.non_2xx}  "
                f"errors {sample.errors}",
                flush=True,
            )
    medians = {
        target: asdict(median_sample(reps[target])) if target in reps else None
        for target in TARGETS
    }
    return {
        "endpoint": endpoint.name,
        "static": endpoint.static,
        "method": endpoint.method,
        "path": endpoint.path,
        "connections": connections,
        **medians,
        "metering_cost_pct": metering_cost_pct(medians["proxy"], medians["proxy_unmetered"]),
        "metering_cost_paired_pct": paired_metering_cost_pct(
            reps["proxy"], reps["proxy_unmetered"]
        ),
        "reps": {target: [asdict(s) for s in samples] for target, samples in reps.items()},
        "warmup": {target: asdict(s) for target, s in warmups.items()},
    }


def check_metered_messages(
    running: RunningPlatform, tenant_id: str, results: list[dict[str, Any]], checked: int
) -> dict[str, Any]:
    """Compare the tenant's ``messages`` counter with the sends that went through the metered
    proxy: at least those the load generator saw succeed; at most that plus the requests a run
    cut off in flight (its connection count) and the ones it saw fail on the socket. More would
    mean the unmetered proxy metered too; fewer, that metering lost messages. (With
    ``--against`` its two proxies meter too: their sends count as the metered proxy's.)"""
    low, slack = checked, 0
    for row in results:
        if row["endpoint"] != "send":
            continue
        for target in METERING_TARGETS:
            if target not in row["reps"]:
                continue
            warmup = row["warmup"].get(target)
            samples = row["reps"][target] + ([warmup] if warmup else [])
            low += sum(s["requests"] - s["non_2xx"] for s in samples)
            slack += sum(row["connections"] + s["errors"] for s in samples)
    # The proxy flushes every second and beat applies every second: allow some time.
    deadline = time.monotonic() + 30
    while usage_messages(running, tenant_id) < low and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # stragglers: requests cut off in flight are counted a flush later
    counted = usage_messages(running, tenant_id)
    return {
        "counted": counted,
        "expected_min": low,
        "expected_max": low + slack,
        "ok": low <= counted <= low + slack,
    }


# Reporting -----------------------------------------------------------------------------

THROUGHPUT_COLUMNS = (
    ("endpoint", "{:<8}"),
    ("conns", "{:>5}"),
    ("direct req/s", "{:>12}"),
    ("metered req/s", "{:>13}"),
    ("unmetered req/s", "{:>15}"),
    ("metered/direct", "{:>14}"),
    ("metering cost", "{:>13}"),
    ("paired", "{:>8}"),
    ("non-2xx d/m/u", "{:>13}"),
    ("errors d/m/u", "{:>12}"),
)
LATENCY_COLUMNS = (
    ("endpoint", "{:<8}"),
    ("conns", "{:>5}"),
    ("direct p50/p99 ms", "{:>17}"),
    ("metered p50/p99 ms", "{:>18}"),
    ("unmetered p50/p99 ms", "{:>20}"),
    ("added p50 ms", "{:>12}"),
    ("metering p99 ms", "{:>15}"),
)


NGINX_COLUMNS = (
    ("endpoint", "{:<8}"),
    ("conns", "{:>5}"),
    ("nginx req/s", "{:>11}"),
    ("metered/nginx", "{:>13}"),
    ("unmetered/nginx", "{:>15}"),
    ("CPU us/req metered/unmetered/nginx/floor", "{:>40}"),
    ("p99 ms direct/metered/nginx", "{:>27}"),
    ("metered p99/direct", "{:>18}"),
)
AGAINST_COLUMNS = (
    ("endpoint", "{:<8}"),
    ("conns", "{:>5}"),
    ("req/s this/against", "{:>18}"),
    ("CPU us/req this/against", "{:>23}"),
    ("this - against (paired)", "{:>23}"),
    ("reps this used less CPU", "{:>23}"),
    ("p99 ms this/against", "{:>19}"),
)


def against_row(row: dict[str, Any]) -> list[str]:
    """This tree's extra proxy against ``--against``'s, both metering, in the same reps."""
    ours, theirs = row["this"], row["against"]
    pairs = list(zip(row["reps"]["this"], row["reps"]["against"], strict=True))
    # Within a rep the two ran back to back: their difference drifts less than either.
    differences = [
        a["cpu_us"] - b["cpu_us"]
        for a, b in pairs
        if a["cpu_us"] is not None and b["cpu_us"] is not None
    ]
    less = sum(1 for difference in differences if difference < 0)
    paired = statistics.median(differences) if differences else math.nan
    return [
        row["endpoint"],
        str(row["connections"]),
        f"{ours['rps']:.0f}/{theirs['rps']:.0f}",
        "/".join(_fmt(s.get("cpu_us"), "{:.0f}") for s in (ours, theirs)),
        _fmt(paired, "{:+.1f}"),
        f"{less} of {len(pairs)}",
        f"{ours['p99_ms']:.1f}/{theirs['p99_ms']:.1f}",
    ]


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> float:
    return a[key] / b[key] if a and b and b[key] else math.nan


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None or math.isnan(value) else fmt.format(value)


def nginx_row(row: dict[str, Any]) -> list[str]:
    direct, metered, unmetered = row["direct"], row["proxy"], row["proxy_unmetered"]
    nginx = row.get("nginx")
    cpus = "/".join(
        _fmt(s and s.get("cpu_us"), "{:.0f}") for s in (metered, unmetered, nginx, row.get("floor"))
    )
    p99s = "/".join(_fmt(s and s["p99_ms"], "{:.1f}") for s in (direct, metered, nginx))
    return [
        row["endpoint"],
        str(row["connections"]),
        _cell(nginx, "{rps:.0f}"),
        _fmt(_ratio(metered, nginx, "rps"), "{:.2f}"),
        _fmt(_ratio(unmetered, nginx, "rps"), "{:.2f}"),
        cpus,
        p99s,
        _fmt(_ratio(metered, direct, "p99_ms") if not row.get("static") else math.nan, "{:.2f}"),
    ]


def goals_verdict(report: dict[str, Any]) -> list[str]:
    """Issue 16's goals for the hot path, cell by cell, for the metered proxy."""
    rows = report["results"]
    most = max(r["connections"] for r in rows)
    lines = []
    cpu = [(r, r["proxy"].get("cpu_us")) for r in rows if r["proxy"].get("cpu_us") is not None]
    over = [
        f"{r['endpoint']} c={r['connections']} ({c:.0f})"
        for r, c in cpu
        if c > CPU_PER_REQUEST_GOAL_US
    ]
    lines.append(
        f"goal: proxy CPU per request <= {CPU_PER_REQUEST_GOAL_US:g} us: met in "
        f"{len(cpu) - len(over)}/{len(cpu)} cells"
        + ("; over in " + ", ".join(over) if over else "")
    )
    own = [
        f"{r['endpoint']} c={r['connections']} {c - r['floor']['cpu_us']:.0f} "
        f"(floor {r['floor']['cpu_us']:.0f})"
        for r, c in cpu
        if r.get("floor") and r["floor"].get("cpu_us")
    ]
    if own:
        lines.append(
            "the proxy's own CPU per request above the Python floor, us: " + ", ".join(own)
        )
    for row in rows:
        if row.get("static") and row["connections"] == most and row.get("nginx"):
            ratio = _ratio(row["proxy"], row["nginx"], "rps")
            lines.append(
                f"goal: static-upstream ceiling >= {STATIC_CEILING_GOAL:g} x nginx's "
                f"(c={most}): {ratio:.2f} x ({row['proxy']['rps']:.0f} vs "
                f"{row['nginx']['rps']:.0f} req/s) "
                + ("met" if ratio >= STATIC_CEILING_GOAL else "MISSED")
            )
        elif row["direct"] and not row.get("static") and row["connections"] == most:
            ratio = _ratio(row["proxy"], row["direct"], "p99_ms")
            lines.append(
                f"goal: p99 at {most} connections <= {P99_GOAL:g} x direct ({row['endpoint']}): "
                f"{ratio:.3f} x ({row['proxy']['p99_ms']:.1f} vs {row['direct']['p99_ms']:.1f} "
                f"ms) " + ("met" if ratio <= P99_GOAL else "MISSED")
            )
    return lines


def _cell(sample: dict[str, Any] | None, fmt: str) -> str:
    return "-" if sample is None else fmt.format(**sample)


def throughput_row(row: dict[str, Any]) -> list[str]:
    direct, metered, unmetered = row["direct"], row["proxy"], row["proxy_unmetered"]
    ratio = metered["rps"] / direct["rps"] if direct and direct["rps"] else math.nan
    samples = (direct, metered, unmetered)
    return [
        row["endpoint"],
        str(row["connections"]),
        _cell(direct, "{rps:.0f}"),
        f"{metered['rps']:.0f}",
        f"{unmetered['rps']:.0f}",
        "-" if math.isnan(ratio) else f"{ratio:.2f}",
        f"{row['metering_cost_pct']:+.1f} %",
        f"{row['metering_cost_paired_pct']:+.1f} %",
        "/".join(_cell(s, "{non_2xx}") for s in samples),
        "/".join(_cell(s, "{errors}") for s in samples),
    ]


def latency_row(row: dict[str, Any]) -> list[str]:
    direct, metered, unmetered = row["direct"], row["proxy"], row["proxy_unmetered"]
    return [
        row["endpoint"],
        str(row["connections"]),
        _cell(direct, "{p50_ms:.2f}/{p99_ms:.2f}"),
        f"{metered['p50_ms']:.2f}/{metered['p99_ms']:.2f}",
        f"{unmetered['p50_ms']:.2f}/{unmetered['p99_ms']:.2f}",
        "-" if direct is None else f"{metered['p50_ms'] - direct['p50_ms']:+.2f}",
        f"{metered['p99_ms'] - unmetered['p99_ms']:+.2f}",
    ]


def _table(columns: tuple[tuple[str, str], ...], rows: list[list[str]]) -> list[str]:
    header = "  ".join(fmt.format(name) for name, fmt in columns)
    lines = [header, "-" * len(header)]
    for cells in rows:
        lines.append(
            "  ".join(fmt.format(cell) for (_, fmt), cell in zip(columns, cells, strict=True))
        )
    return lines


def metering_verdict(report: dict[str, Any]) -> str:
    target = report["settings"]["metering_cost_target_pct"]
    rows = report["results"]
    over = [r for r in rows if not r["metering_cost_pct"] <= target]
    line = f"target: metering costs <= {target:g} % of throughput: met in {len(rows) - len(over)}"
    line += f"/{len(rows)} cells"
    if over:
        line += "; over in " + ", ".join(
            f"{r['endpoint']} c={r['connections']} ({r['metering_cost_pct']:.1f} %)" for r in over
        )
    return line


def render_table(report: dict[str, Any]) -> str:
    rows = report["results"]
    lines = _table(THROUGHPUT_COLUMNS, [throughput_row(r) for r in rows])
    lines += [""] + _table(LATENCY_COLUMNS, [latency_row(r) for r in rows])
    if any(r.get("nginx") for r in rows):
        lines += [""] + _table(NGINX_COLUMNS, [nginx_row(r) for r in rows])
    if any(r.get("against") for r in rows):
        lines += [
            "",
            f"this tree against {report['against']} (two more c3 proxy, both metering, "
            "started alike, same reps):",
        ]
        lines += _table(AGAINST_COLUMNS, [against_row(r) for r in rows if r.get("against")])
    settings = report["settings"]
    check = report["metering_check"]
    lines += [
        "",
        "metered = the platform's proxy (metering on), unmetered = c3 proxy --no-metering; "
        "floor = tcp_pipe.py, a pass-through TCP relay in Python on uvloop (no HTTP); "
        "metering cost = 1 - metered/unmetered median req/s (paired: median over reps of "
        "the same ratio within a rep); added p50 = metered - direct; "
        "metering p99 = metered - unmetered",
        metering_verdict(report),
        *goals_verdict(report),
        f"messages counted for the metered sends: {check['counted']} (expected "
        f"{check['expected_min']}..{check['expected_max']}) "
        + ("ok" if check["ok"] else "MISMATCH: check the metering"),
        f"tenant provisioning (POST -> active): {report['provisioning_s']:.2f} s",
        f"load generator: {settings['load_generator']}; {settings['reps']} x "
        f"{settings['duration_s']:g} s per cell (median), {settings['warmup_s']:g} s warm-up; "
        f"database {settings['database']}, redis {settings['redis']}; "
        f"1-min load average before the run {report['machine']['loadavg_1m_before']:.2f} "
        f"on {report['machine']['cpus']} CPUs",
        "non-2xx and errors are totals over all reps (direct/metered/unmetered)"
        + (" (wrk counts status >= 400)" if settings["load_generator"] == "wrk" else ""),
    ]
    return "\n".join(lines)


# Main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (5)")
    parser.add_argument("--reps", type=int, default=3, help="runs per cell; median kept (3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell (1)")
    parser.add_argument(
        "--connections", type=int, nargs="+", default=[1, 50], help="connection counts (1 50)"
    )
    parser.add_argument(
        "--cells",
        nargs="+",
        choices=[e.name for e in ENDPOINTS],
        default=[e.name for e in ENDPOINTS],
        help="which endpoints to measure (all); e.g. --cells static for the ceiling alone",
    )
    parser.add_argument(
        "--against",
        metavar="REV_OR_DIR",
        help="also measure a c3 proxy (metering on) of another tree in the same reps: a git "
        "revision, or a services folder (e.g. compiled)",
    )
    parser.add_argument("--no-wrk", action="store_true", help="use the Python load generator")
    parser.add_argument("--keep-data", action="store_true", help="keep the platform data dir")
    args = parser.parse_args()
    problem = against_problem(args.against) if args.against else None
    if problem:
        parser.error(problem)
    if not args.no_wrk and shutil.which("wrk"):
        for name in ("duration", "warmup"):
            if not float(getattr(args, name)).is_integer():
                parser.error(f"--{name}: wrk takes whole seconds")
    return args


def benchmark(running: RunningPlatform, generator: LoadGenerator, args: argparse.Namespace) -> dict:
    slug = "bench-" + secrets.token_hex(3)
    tenant, provisioning_s = provision_tenant(running, slug)
    print(f"tenant {slug} active after {provisioning_s:.2f} s", flush=True)
    user_id = running.create_user(tenant["id"], USERNAME, PASSWORD)
    direct = f"http://127.0.0.1:{running.homeserver_port(tenant['id'])}"
    lift_message_rate_limit(running, tenant["id"], direct, user_id)
    proxy = f"{running.proxy_url}/t/{slug}"
    token = login(proxy)
    room_id = create_room(proxy, token)
    endpoints = [
        replace(e, path=e.path.format(room=quote(room_id, safe="")))
        for e in ENDPOINTS
        if e.name in args.cells
    ]
    with (
        second_proxy(running, "unmetered", ["--no-metering"]) as (unmetered, unmetered_pid),
        nginx_yardstick(slug, direct) as (nginx_proxy, nginx_static),
        python_floor(direct) as (floor, floor_pid),
        ExitStack() as more,
    ):
        # Not the platform's proxy against another: that one also served the run's set-up;
        # two proxies started alike differ only by their trees.
        extra: dict[str, tuple[str, int]] = {}
        against_tree = None
        if args.against:
            work = Path(more.enter_context(tempfile.TemporaryDirectory(prefix="c3-against-")))
            services, against_tree = other_services(args.against, work)
            for name, tree in (("this", REPO_ROOT / "services"), ("against", services)):
                extra[name] = more.enter_context(second_proxy(running, name, [], tree))
        bases = {
            "direct": direct,
            "proxy": proxy,
            "proxy_unmetered": f"{unmetered}/t/{slug}",
            "floor": floor,  # straight to Synapse: it routes nothing
        }
        pids = {
            "proxy": platform_proxy(running).pid,
            "proxy_unmetered": unmetered_pid,
            "floor": floor_pid,
        }
        for name, (url, pid) in extra.items():
            bases[name] = f"{url}/t/{slug}"
            pids[name] = pid
        static_bases: dict[str, str] = {}
        static_pids: dict[str, int] = {}
        if nginx_proxy is not None and nginx_static is not None:
            assert nginx_proxy.proxy_url is not None and nginx_static.static_url is not None
            bases["nginx"] = f"{nginx_proxy.proxy_url}/t/{slug}"
            pids["nginx"] = nginx_proxy.pid
            static_slug = publish_static_route(running, slug, nginx_static.static_url)
            static_floor, static_floor_pid = more.enter_context(
                python_floor(nginx_static.static_url)
            )
            static_bases = {
                "direct": nginx_static.static_url,
                "proxy": f"{running.proxy_url}/t/{static_slug}",
                "proxy_unmetered": f"{unmetered}/t/{static_slug}",
                "nginx": f"{nginx_proxy.proxy_url}/t/{static_slug}",
                "floor": static_floor,
            }
            for name, (url, _) in extra.items():
                static_bases[name] = f"{url}/t/{static_slug}"
            static_pids = {**pids, "direct": nginx_static.pid, "floor": static_floor_pid}
            for base in static_bases.values():
                poll(
                    lambda b=base: httpx.get(f"{b}/_matrix/client/versions").status_code == 200,  # type: ignore[misc]
                    timeout=30,
                    what=f"the static route at {base}",
                )
        else:
            endpoints = [e for e in endpoints if not e.static]
        targets = Targets(bases, static_bases, pids, static_pids)
        checked_sends = check_endpoints(targets, token, endpoints)
        print(
            f"direct {direct}  metered {proxy}  unmetered {bases['proxy_unmetered']}  "
            f"nginx {bases.get('nginx', '-')}  room {room_id}  ({generator.name})",
            flush=True,
        )
        results = [
            measure(generator, targets, token, endpoint, connections, args)
            for endpoint in endpoints
            for connections in args.connections
        ]
    metering_check = check_metered_messages(running, tenant["id"], results, checked_sends)
    return {
        "provisioning_s": provisioning_s,
        "against": against_tree,
        "room_id": room_id,
        "results": results,
        "metering_check": metering_check,
    }


def main() -> int:
    args = parse_args()
    stop_on_sigterm()
    load_before = os.getloadavg()[0]
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    overrides = platform_overrides()
    data_dir = Path(tempfile.mkdtemp(prefix="c3-bench-"))
    with (
        running_platform(overrides, data_dir, keep_data=args.keep_data) as running,
        load_generator(prefer_wrk=not args.no_wrk) as generator,
    ):
        measured = benchmark(running, generator, args)

    report = {
        "started_at": started_at,
        "settings": {
            "duration_s": args.duration,
            "reps": args.reps,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "cells": args.cells,
            "metering_cost_target_pct": METERING_COST_TARGET_PCT,
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
    path = write_results("proxy", report)
    print(f"\nresults written to {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
