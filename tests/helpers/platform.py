"""Running the real platform for end-to-end tests: `c3 up` as a child process, plus helpers
that poll with deadlines (never sleep-and-hope)."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import redis
import yaml

from c3.local_run import free_port
from platform_core.redis import RedisKeys

T = TypeVar("T")


def poll(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.1) -> T:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


async def poll_async(
    check: Callable[[], Awaitable[T | None] | T | None],
    *,
    timeout: float,  # noqa: ASYNC109 -- the same signature as poll(); a deadline, not a cancel
    what: str,
    interval: float = 0.02,
) -> T:
    """``poll`` for async tests: calls ``check`` (awaiting it if it is a coroutine function) and
    yields the event loop between tries."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class RunningPlatform:
    process: subprocess.Popen[bytes]
    api_url: str
    proxy_url: str
    data_dir: Path
    token: str
    log_path: Path
    env: dict[str, str]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, headers=self.headers, timeout=30)

    def create_tenant(self, slug: str, *, timeout: float = 60) -> dict[str, Any]:
        """POST a tenant and wait until it is active; returns the tenant as the API shows it."""
        with self.api() as api:
            response = api.post("/v1/tenants", json={"slug": slug, "display_name": slug.title()})
            assert response.status_code == 202, response.text
            tenant_id = response.json()["id"]

            def active() -> dict[str, Any] | None:
                tenant = api.get(f"/v1/tenants/{tenant_id}").json()
                assert tenant["status"] in ("provisioning", "active"), tenant
                return tenant if tenant["status"] == "active" else None

            return poll(active, timeout=timeout, what=f"tenant {slug} to become active")

    def create_user(self, tenant_id: str, username: str, password: str) -> str:
        with self.api() as api:
            response = api.post(
                f"/v1/tenants/{tenant_id}/users", json={"username": username, "password": password}
            )
            assert response.status_code == 201, response.text
            return str(response.json()["user_id"])

    def homeserver_dir(self, tenant_id: str) -> Path:
        return self.data_dir / "homeservers" / tenant_id

    def homeserver_port(self, tenant_id: str) -> int:
        """The loopback port of the tenant's Synapse (to reach it directly, not via the proxy)."""
        config = yaml.safe_load((self.homeserver_dir(tenant_id) / "homeserver.yaml").read_text())
        return int(config["listeners"][0]["port"])

    def stop(self) -> int:
        return stop_process(self.process, timeout=90, signal_=signal.SIGINT)

    def log_tail(self, lines: int = 40) -> str:
        out = [self.log_path.read_text(errors="replace")] if self.log_path.exists() else []
        for child in sorted((self.data_dir / "logs").glob("*.log")):
            out.append(f"--- {child.name}\n" + child.read_text(errors="replace"))
        return "\n".join("\n".join(text.splitlines()[-lines:]) for text in out)


def redis_of(platform: RunningPlatform) -> tuple[redis.Redis, RedisKeys]:
    """The platform's Redis, and its keys (its namespace)."""
    return redis.Redis.from_url(platform.env["C3_REDIS_URL"]), RedisKeys(
        platform.env["C3_REDIS_NAMESPACE"]
    )


def stop_process(
    process: subprocess.Popen[Any], timeout: float, signal_: int = signal.SIGTERM
) -> int:
    """Ask a process we started to stop (``signal_``); killed if it has not within ``timeout``
    seconds. Its exit code."""
    if process.poll() is None:
        process.send_signal(signal_)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


@dataclass
class ProxyProcess:
    """One more proxy (``c3 proxy``) beside the platform's own, to stop and kill at will."""

    process: subprocess.Popen[bytes]
    url: str

    def terminate(self) -> int:
        """SIGTERM: a graceful stop that must flush every counted request."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> int:
        """SIGKILL (kill -9): nothing runs after it."""
        self.process.kill()
        return self.process.wait(timeout=30)


def start_proxy(running: RunningPlatform, port: int, **extra_env: str) -> ProxyProcess:
    """One more ``c3 proxy`` beside the platform's own (``extra_env``: more settings)."""
    env = {**running.env, "C3_PROXY_PORT": str(port), "C3_OPERATOR_TOKEN": running.token}
    env.update(extra_env)
    log = open(running.data_dir / "logs" / f"extra-proxy-{port}.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "c3", "proxy"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"c3 proxy exited at start ({process.returncode})")
        try:
            return httpx.get(f"{url}/_c3/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    poll(healthy, timeout=30, what="the extra proxy to answer /_c3/health")
    return ProxyProcess(process, url)


def start_platform(env_overrides: dict[str, str], data_dir: Path, token: str) -> RunningPlatform:
    api_port, proxy_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("C3_")}
    env.update(env_overrides)
    env.update(
        {
            "C3_DATA_DIR": str(data_dir),
            "C3_API_PORT": str(api_port),
            "C3_PROXY_PORT": str(proxy_port),
            "C3_OPERATOR_TOKEN": token,
        }
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "c3-up.log"
    offset = log_path.stat().st_size if log_path.exists() else 0  # earlier runs' output
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "c3", "up"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    running = RunningPlatform(
        process=process,
        api_url=f"http://127.0.0.1:{api_port}",
        proxy_url=f"http://127.0.0.1:{proxy_port}",
        data_dir=data_dir,
        token=token,
        log_path=log_path,
        env=env,
    )

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError("c3 up exited at start:\n" + running.log_tail())
        with open(log_path, "rb") as log:
            log.seek(offset)
            return b"C3 is running" in log.read()

    poll(ready, timeout=120, what="c3 up to report it is running")
    return running


def wait_operation(platform: RunningPlatform, url: str, timeout: float = 90) -> dict[str, Any]:
    with platform.api() as api:

        def done() -> dict[str, Any] | None:
            operation = api.get(url).json()
            assert operation["state"] != "failed", operation
            return operation if operation["state"] == "succeeded" else None

        return poll(done, timeout=timeout, what=f"operation {url} to succeed")


@contextmanager
def running_api(env: dict[str, str], log: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A real ``c3 api`` server (its own process and port, ``env`` its whole environment) until
    the block ends; yields its port and process. Fails if it logged a traceback meanwhile."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "c3", "api"],
            env={**env, "C3_API_PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError("c3 api exited:\n" + log.read_text())
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        # Generous: importing the API alone took 18 s on a 2-core machine at load ~17.
        poll(up, timeout=90, what="the API server")
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


def worker_main(running: RunningPlatform) -> psutil.Process | None:
    """The live `c3 worker` main process of the platform once its pool of 2 is up."""
    for proc in psutil.Process(running.process.pid).children():
        try:
            if proc.cmdline()[-2:] != ["c3", "worker"] or proc.status() == "zombie":
                continue
            pool = [c for c in proc.children() if c.status() != "zombie"]
        except psutil.NoSuchProcess:
            continue
        if len(pool) == 2:
            return proc
    return None


def kill_worker(running: RunningPlatform, *, part: str) -> None:
    """kill -9 the worker's main process (its pool dies with it; `c3 up` starts a new
    worker) or one child of its pool (the main process replaces it); returns once the
    worker is whole again."""
    main = poll(lambda: worker_main(running), timeout=60, what="a running worker")
    victim = main if part == "main" else [c for c in main.children() if c.status() != "zombie"][0]
    os.kill(victim.pid, signal.SIGKILL)

    def whole_again() -> bool:
        now = worker_main(running)
        if now is None:
            return False
        if part == "main":
            return now.pid != main.pid
        return victim.pid not in {c.pid for c in now.children() if c.status() != "zombie"}

    poll(whole_again, timeout=60, what=f"the worker to recover from kill -9 of its {part}")
