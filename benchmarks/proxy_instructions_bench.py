"""Proxy instructions benchmark: the user-space instructions the proxy executes per relayed
request, counted by valgrind's callgrind, beside the Python floor's (``tcp_pipe.py``).

CPU time per request (``proxy_bench.py``) moves with the VM: the same code measured 52–60 µs a
request on one VM kind and 80–111 µs on another. An instruction count moves far less: it is
the same for the same code, inputs, interpreter and request rate, so a change to the hot path
can be judged on any VM. Not beside other load, though: the rate then falls, and the event
loop's turns and per-second work are shared by fewer requests (the same code counted 2–3 %
more with tests running beside it, at half the rate). Old against new is best judged in one
run, at similar rates. It leaves out the kernel (the socket calls, the same two reads and two
writes a request as the floor's) and what a cache miss costs; the CPU figures of
``proxy_bench.py`` stay the goal's measure.

``--against REV_OR_DIR`` counts a proxy of another tree too, in the same run and alternating
(this tree, the other, this tree, the other), and prints the change: a git revision of this
repository (its ``services`` archived), or a ``services`` folder as it is (one with modules
compiled, say). The way to judge a change to the hot path.

``--inclusive MODULE:QUALNAME ...`` counts only inside each named function (and what it
calls), one proxy run each, through ``benchmarks/inclusive.py`` (needs gcc and valgrind's
headers): where a request's instructions go, which callgrind's own profile cannot say of
Python functions.

One run:

1. starts the platform (``tests.platform.start_platform``, as ``proxy_bench.py`` does),
   provisions a tenant, logs its user in, and when nginx is installed starts it as a static
   upstream (``return 200``) that a second route of the tenant points at;
2. per target — ``proxy``: ``c3 proxy`` (metering on) with the platform proxy's environment on
   a free port; ``floor``: ``tcp_pipe.py`` in front of the same upstream — starts it under
   ``valgrind --tool=callgrind --instr-atstart=no`` (fast until instrumented);
3. first ``--duration`` seconds without load (its timers and periodic tasks, taken off what
   follows), then per cell (``versions``, ``whoami`` and ``send`` — a message with a new txn id
   each, so a path never seen before — from Synapse, ``static`` from nginx's upstream): wrk
   for ``--warmup`` seconds, then instrumentation on (``callgrind_control -i on``), wrk at
   ``--connections`` for ``--duration`` seconds, instrumentation off, a dump; instructions
   counted over answered requests;
4. prints a table and writes it as JSON to ``benchmarks/results/instructions-<stamp>.json``.

Under callgrind a process runs ~50× slower, so the rates are low (a few hundred requests a
second): every request is its own event-loop turn, the proxy's costliest case.

Usage (from the repository root; needs ``valgrind`` and ``wrk``, Debian's packages)::

    .venv/bin/python benchmarks/proxy_instructions_bench.py [--duration 15] [--warmup 5]
    .venv/bin/python benchmarks/proxy_instructions_bench.py --against HEAD~3   # old and new
    .venv/bin/python benchmarks/proxy_instructions_bench.py --duration 8 --warmup 3 \\
        --inclusive homeserver_proxy.relay:_Exchange._finish homeserver_proxy.relay:_whole_answer
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import (  # noqa: E402
    against_problem,
    other_services,
    running_platform,
    stop_on_sigterm,
    write_results,
)
from benchmarks.inclusive import FUNCTION_ENV, build_helper  # noqa: E402
from benchmarks.nginx import nginx_binary, running_nginx  # noqa: E402
from benchmarks.proxy_bench import (  # noqa: E402
    ENDPOINTS,
    PASSWORD,
    USERNAME,
    Endpoint,
    create_room,
    lift_message_rate_limit,
    load_request,
    login,
    platform_overrides,
    platform_proxy_env,
    provision_tenant,
    publish_static_route,
    run_wrk,
)
from c3.local_run import free_port  # noqa: E402
from tests.helpers.platform import RunningPlatform, poll, stop_process  # noqa: E402

CELLS = ("versions", "whoami", "send", "static")
START_TIMEOUT_S = 300.0  # a Python program starting under valgrind


@contextmanager
def under_callgrind(
    argv: list[str], env: dict[str, str] | None, out: Path, healthy: Any, inclusive: bool = False
) -> Iterator[int]:
    """``argv`` under callgrind, instrumentation off, until ``healthy()``; yields its pid.
    ``inclusive``: instrumented from the start, collecting only inside the function that
    ``benchmarks.inclusive`` wraps."""
    mode = ["--collect-atstart=no"] if inclusive else ["--instr-atstart=no"]
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", *mode, f"--callgrind-out-file={out}"] + argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches us; we stop it
    )
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{argv[-1]} exited under valgrind ({process.returncode})")
            return bool(healthy())

        poll(up, timeout=START_TIMEOUT_S, what=f"{' '.join(argv[-3:])} under callgrind")
        yield process.pid
    finally:
        stop_process(process, 30, signal.SIGINT)


def instructions_of(pid: int, out: Path, load: Any, inclusive: bool = False) -> int:
    """The instructions ``pid`` executed while ``load()`` ran (one callgrind dump); with
    ``inclusive``, those it collected (counts zeroed first, instrumentation left on)."""
    before = set(out.parent.glob(out.name + ".*"))
    start = ["-z"] if inclusive else ["-i", "on"]
    subprocess.run(["callgrind_control", *start, str(pid)], check=True, capture_output=True)
    try:
        load()
    finally:
        if not inclusive:
            subprocess.run(
                ["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True
            )
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    (dump,) = set(out.parent.glob(out.name + ".*")) - before
    for line in reversed(dump.read_text().splitlines()):
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def answers(url: str, headers: dict[str, str]) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def measure(
    pid: int,
    out: Path,
    bases: dict[str, str],
    token: str,
    args: argparse.Namespace,
    endpoints: list[Endpoint],
) -> dict[str, dict[str, float]]:
    """Instructions per answered request of each cell of ``bases``, less what the process
    executes as long without a request (its timers and periodic tasks: under callgrind's few
    hundred requests a second they would be thousands of instructions a request)."""
    inclusive = bool(args.inclusive)
    idle = instructions_of(pid, out, lambda: time.sleep(args.duration), inclusive)
    print(f"  idle     {idle / args.duration:12,.0f} instructions a second", flush=True)
    found: dict[str, dict[str, float]] = {"idle": {"per_second": idle / args.duration}}
    for endpoint in endpoints:
        if endpoint.name not in bases:
            continue
        request = load_request(endpoint, bases[endpoint.name], token)
        run_wrk(request, args.connections, args.warmup)
        samples: list[Any] = []

        def load(r: Any = request, into: list[Any] = samples) -> None:
            into.append(run_wrk(r, args.connections, args.duration))

        count = instructions_of(pid, out, load, inclusive)
        (sample,) = samples
        if sample.non_2xx or sample.errors or not sample.requests:
            raise RuntimeError(f"{endpoint.name}: {sample}")
        per_request = (count - idle) / sample.requests
        found[endpoint.name] = {"requests": sample.requests, "per_request": per_request}
        print(
            f"  {endpoint.name:8} {sample.requests:6d} requests  "
            f"{per_request:9,.0f} instructions a request",
            flush=True,
        )
    return found


def benchmark(running: RunningPlatform, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    slug = "bench-" + secrets.token_hex(3)
    tenant, _ = provision_tenant(running, slug)
    user_id = running.create_user(tenant["id"], USERNAME, PASSWORD)
    direct = f"http://127.0.0.1:{running.homeserver_port(tenant['id'])}"
    lift_message_rate_limit(running, tenant["id"], direct, user_id)
    token = login(f"{running.proxy_url}/t/{slug}")
    auth = {"Authorization": f"Bearer {token}"}
    room_id = create_room(f"{running.proxy_url}/t/{slug}", token)
    endpoints = [replace(e, path=e.path.format(room=quote(room_id, safe=""))) for e in ENDPOINTS]
    report: dict[str, Any] = {}
    with ExitStack() as stack:
        static_url = None
        if nginx_binary() is not None:
            static = stack.enter_context(running_nginx({}, static_port=free_port()))
            static_url = static.static_url
        else:
            print("nginx not installed: no static cell", flush=True)
        static_slug = publish_static_route(running, slug, static_url) if static_url else None

        env = platform_proxy_env(running)
        port = free_port()
        env["C3_PROXY_PORT"] = str(port)
        env.pop("C3_PROXY_PUBLIC_URL", None)
        proxy = f"http://127.0.0.1:{port}"
        bases = {name: f"{proxy}/t/{slug}" for name in ("versions", "whoami", "send")}
        if static_slug:
            bases["static"] = f"{proxy}/t/{static_slug}"

        def counted(out: Path, inclusive: bool = False) -> dict[str, dict[str, float]]:
            """``c3 proxy`` (of ``env``'s ``PYTHONPATH``) under callgrind, each cell counted."""
            with under_callgrind(
                [sys.executable, "-m", "c3", "proxy"],
                env,
                out,
                lambda: answers(f"{bases['whoami']}/_matrix/client/v3/account/whoami", auth),
                inclusive=inclusive,
            ) as pid:
                return measure(pid, out, bases, token, args, endpoints)

        if args.inclusive:
            helper = build_helper(work / "helper")
            env["PYTHONPATH"] = os.pathsep.join(
                [str(helper), str(REPO_ROOT / "services"), str(REPO_ROOT)]
            )
            for function in args.inclusive:
                env[FUNCTION_ENV] = function
                out = work / f"proxy-{len(report)}.callgrind"
                print(f"proxy (metering on), under callgrind, inside {function}:", flush=True)
                report[function] = counted(out, inclusive=True)
            return report
        # With --against: this tree, the other, this tree, the other (``against_runs``).
        trees = [("proxy", REPO_ROOT / "services")]
        if args.against:
            services, report["against_tree"] = other_services(args.against, work)
            trees = [("proxy", REPO_ROOT / "services"), ("against", services)] * 2
        for number, (name, services) in enumerate(trees):
            env["PYTHONPATH"] = os.pathsep.join([str(services), str(REPO_ROOT)])
            out = work / f"proxy-{number}.callgrind"
            print(f"{name} (metering on, {services}), under callgrind:", flush=True)
            cells = counted(out)
            report.setdefault(f"{name}_runs", []).append(cells)
            report.setdefault(name, cells)

        floors = {"versions": direct, "whoami": direct, "send": direct}
        if static_url:
            floors["static"] = static_url
        report["floor"] = {}
        for upstream in sorted(set(floors.values())):
            parts = urlsplit(upstream)
            listen = free_port()
            floor = f"http://127.0.0.1:{listen}"
            out = work / f"floor-{parts.port}.callgrind"
            print(f"floor in front of {upstream}, under callgrind:", flush=True)
            script = str(REPO_ROOT / "benchmarks" / "tcp_pipe.py")
            cells = {name: floor for name, url in floors.items() if url == upstream}
            with under_callgrind(
                [sys.executable, script, str(listen), str(parts.hostname), str(parts.port)],
                None,
                out,
                lambda f=floor: answers(f"{f}/_matrix/client/versions", {}),
            ) as pid:
                report["floor"].update(measure(pid, out, cells, token, args, endpoints))
    return report


def render(report: dict[str, Any]) -> str:
    if "proxy" not in report:  # --inclusive: a line per function and cell
        return "\n".join(
            f"{function} {cell:8} {counts['per_request']:12,.0f} instructions a request, inside"
            for function, cells in report.items()
            for cell, counts in cells.items()
            if cell != "idle"
        )
    lines = [
        "cell      proxy instr/req  floor instr/req  proxy above the floor",
        "-" * 66,
    ]
    for cell in CELLS:
        proxy = report["proxy"].get(cell)
        floor = report["floor"].get(cell)
        if proxy is None or floor is None:
            continue
        p, f = proxy["per_request"], floor["per_request"]
        lines.append(f"{cell:8} {p:16,.0f} {f:16,.0f} {p - f:16,.0f} ({p / f:.1f}x)")
    if "against_runs" in report:
        lines += [
            "",
            f"against {report['against_tree']}, in the same run (instructions a request):",
            "cell      this tree, two runs    against, two runs  this vs against",
            "-" * 66,
        ]
        for cell in CELLS:
            ours = [run[cell]["per_request"] for run in report["proxy_runs"] if cell in run]
            theirs = [run[cell]["per_request"] for run in report["against_runs"] if cell in run]
            if not ours or not theirs:
                continue
            change = sum(ours) / len(ours) / (sum(theirs) / len(theirs)) - 1
            lines.append(
                f"{cell:8} {' / '.join(f'{n:,.0f}' for n in ours):>21} "
                f"{' / '.join(f'{n:,.0f}' for n in theirs):>21} {change:+10.1%}"
            )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds counted a cell")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the platform's data folder and the callgrind files (callgrind_annotate)",
    )
    parser.add_argument(
        "--against",
        metavar="REV_OR_DIR",
        help="also count a proxy of another tree in the same run, alternating (this tree, the "
        "other, this tree, the other): a git revision, or a services folder (e.g. compiled)",
    )
    parser.add_argument(
        "--inclusive",
        nargs="+",
        metavar="MODULE:QUALNAME",
        help="count only inside these functions, one proxy run each (benchmarks/inclusive.py), "
        "e.g. homeserver_proxy.relay:_Exchange._finish; no floor",
    )
    args = parser.parse_args()
    if args.against and args.inclusive:
        parser.error("--against counts whole requests: not with --inclusive")
    problem = against_problem(args.against) if args.against else None
    if problem:
        parser.error(problem)
    return args


def main() -> int:
    stop_on_sigterm()
    args = parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install valgrind wrk", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="c3-instructions-"))
    data_dir = Path(tempfile.mkdtemp(prefix="c3-bench-"))
    try:
        with running_platform(platform_overrides(), data_dir, keep_data=args.keep_data) as running:
            report = benchmark(running, args, work)
    finally:
        if args.keep_data:  # the callgrind files too, for callgrind_annotate
            print(f"callgrind files kept in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    table = render(report)
    print("\n" + table)
    path = write_results(
        "instructions",
        {"args": vars(args), "python": sys.version, "at": time.time(), "report": report},
    )
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
