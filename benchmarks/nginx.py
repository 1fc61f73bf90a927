"""nginx for the benchmarks: Debian's package (``apt-get install nginx-light``), one worker,
as the yardstick the proxy is measured against in the same run.

``running_nginx`` starts one nginx (master + 1 worker) serving either of, on loopback ports of
its own (two processes when both are wanted, so a proxy's CPU is not mixed with its upstream's):

- a **static upstream** (``return 200`` of a small JSON body): the fastest homeserver there
  could be, so a proxy in front of it shows its own ceiling, not the homeserver's;
- a **reverse proxy** to any number of upstreams, each under a ``/t/<slug>/`` prefix that it
  strips (as the C3 proxy does): keep-alive to the upstream, HTTP/1.1, buffering on — the
  usual production setup.

CPU is read from ``/proc/<pid>/stat`` (utime + stime of the master and its worker); the same
file gives the other benchmarks a process's CPU and minor page faults.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STATIC_BODY = '{"versions":["v1.11"]}'
INSTALL_HINT = "nginx is not installed: apt-get install -y nginx-light (or nginx)"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def _stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` from field 3 on. The command name (field 2) may hold spaces:
    fields are counted after its ')'."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (fields 14 and 15, in clock ticks)."""
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far (field 10): pages it mapped without reading
    them from disk, a copy-on-write copy or a first write among them."""
    return int(_stat_fields(pid)[7])


def voluntary_switches(pid: int) -> int:
    """Voluntary context switches of all the process's threads so far: each one a thread that
    went to sleep (on a timer, a socket, a lock) and was woken again."""
    return _switches(pid, ("voluntary_ctxt_switches:",))


def context_switches(pid: int) -> int:
    """Context switches of all the process's threads so far, voluntary and not (preempted)."""
    return _switches(pid, ("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"))


def _switches(pid: int, kinds: tuple[str, ...]) -> int:
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            for line in status.read_text().splitlines():
                if line.startswith(kinds):
                    total += int(line.split()[1])
    return total


def on_cpu_seconds(pid: int) -> float:
    """The time all the process's threads have run on a CPU, to the nanosecond (the first field
    of each ``/proc/<pid>/task/<tid>/schedstat``): ``cpu_seconds`` counts clock ticks (10 ms),
    too coarse for one request. A thread that ended is no longer counted."""
    total = 0
    for schedstat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that ended
            total += int(schedstat.read_text().split()[0])
    return total / 1e9


def tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` and its children (nginx's master + worker; a proxy and its helpers)."""
    total = cpu_seconds(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            try:
                total += cpu_seconds(int(child))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    static_url: str | None  # the static upstream
    proxy_url: str | None  # the reverse proxy; ``proxy_url + "/t/<slug>"`` reaches that upstream

    @property
    def pid(self) -> int:
        return self.process.pid


def _config(
    prefix: Path, static_port: int | None, proxy_port: int | None, upstreams: dict[str, str]
) -> str:
    blocks = []
    locations = []
    for index, (slug, upstream) in enumerate(sorted(upstreams.items())):
        hostport = upstream.removeprefix("http://").rstrip("/")
        blocks.append(f"upstream u{index} {{ server {hostport}; keepalive 256; }}")
        locations.append(
            f"location /t/{slug}/ {{ proxy_pass http://u{index}/; }}"
        )  # the trailing / strips the prefix, as the C3 proxy does
    static = (
        f"""server {{
        listen 127.0.0.1:{static_port} backlog=4096;
        default_type application/json;
        location / {{ return 200 '{STATIC_BODY}'; }}
    }}"""
        if static_port is not None
        else ""
    )
    proxy = (
        f"""server {{
        listen 127.0.0.1:{proxy_port} backlog=4096;
        {" ".join(locations)}
    }}"""
        if proxy_port is not None
        else ""
    )
    return f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 32768; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_read_timeout 130s;
    {" ".join(blocks)}
    {static}
    {proxy}
}}
"""


@contextmanager
def running_nginx(
    upstreams: dict[str, str], static_port: int | None = None, proxy_port: int | None = None
) -> Iterator[Nginx]:
    """nginx with one worker serving the static upstream on ``static_port`` and/or proxying
    ``/t/<slug>/`` to ``upstreams[slug]`` on ``proxy_port``; stopped on the way out."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    prefix = Path(tempfile.mkdtemp(prefix="c3-bench-nginx-"))
    config = prefix / "nginx.conf"
    config.write_text(_config(prefix, static_port, proxy_port, upstreams))
    process = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_listening(process, [p for p in (static_port, proxy_port) if p is not None], prefix)
        yield Nginx(
            process,
            f"http://127.0.0.1:{static_port}" if static_port is not None else None,
            f"http://127.0.0.1:{proxy_port}" if proxy_port is not None else None,
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)  # graceful: the worker finishes, then exits
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(prefix, ignore_errors=True)


def _wait_listening(process: subprocess.Popen[bytes], ports: list[int], prefix: Path) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
            raise RuntimeError(f"nginx exited ({process.returncode}): {log[-2000:]}")
        try:
            for port in ports:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not start listening within 10 s")
