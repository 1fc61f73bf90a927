"""Local backend: one Synapse process per tenant under ``<data dir>/homeservers/<tenant id>/``.

Synapse is started detached (its parent exits at once) so it outlives the worker process that
started it, and is found again through a pid file whose process must be the tenant's: its
command line names the tenant's config, or (forked by the zygote) it is the zygote's and its
working directory is the tenant's — a recycled pid never passes for a homeserver.

A homeserver is forked from the Synapse zygote (``provisioner.backends.zygote``: Synapse
imported once, each start skips the import, the largest part of a start) unless
``C3_SYNAPSE_ZYGOTE`` is off; should the zygote fail, it is started as a process of its own.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from platform_core import object_store
from platform_core.errors import TemporaryError
from platform_core.object_store import ObjectStore
from platform_core.private_files import work_root
from provisioner.backends.base import (
    HOMESERVER_DUE_WORK_SQL,
    HOMESERVER_MEDIA_BYTES_SQL,
    HOMESERVER_MESSAGES_SQL,
    Backend,
    HomeserverTarget,
    database_section,
    spec_for,
    store_archive,
)
from provisioner.backends.zygote import (
    Zygote,
    ZygoteError,
    alive,
    fingerprint,
    forked_in,
    live_process,
)
from provisioner.backends.zygote_server import SYNAPSE_GC_CHECK_S
from provisioner.malloc import synapse_environment
from provisioner.synapse_config import HomeserverSecrets, write_homeserver_files

log = logging.getLogger(__name__)

_STOP_GRACE_S = 15.0
SYSTEM_CA_DIRECTORY = Path("/etc/ssl/certs")
SYSTEM_CA_BUNDLE = "ca-certificates.crt"

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10000  # above the well-known and most registered services' ports
_FEWEST_PAIRS = 1000


def homeserver_ports(configured: str = "", ephemeral: tuple[int, int] | None = None) -> range:
    """The client ports local homeservers take: even ports, each with its metrics port (the
    odd port after it) inside the range too.

    ``configured`` is C3_HOMESERVER_PORTS ("LOW-HIGH"). Unset, the ports lie outside the
    kernel's ephemeral range (``ephemeral``, read from /proc when not given): every outgoing
    connection on the machine takes its local port from that range, so a port chosen there is
    free when checked and can be a passing connection's a moment later, as a sleeping
    homeserver wakes. Below the range from 10000 when at least a thousand pairs fit there
    (Linux's default range starts at 32768: 11,384 pairs), else above it."""
    if configured:
        low, high = (int(part) for part in configured.split("-"))
    else:
        eph_low, eph_high = ephemeral or _ephemeral_range()
        if eph_low - _LOWEST_PORT >= 2 * _FEWEST_PAIRS:
            low, high = _LOWEST_PORT, eph_low - 1
        elif 65535 - eph_high >= 2 * _FEWEST_PAIRS:
            low, high = eph_high + 1, 65535
        else:
            log.warning(
                "the ephemeral port range %s-%s leaves no room for homeserver ports outside it;"
                " set C3_HOMESERVER_PORTS (a wake may then find its port taken and move it)",
                eph_low,
                eph_high,
            )
            low, high = _LOWEST_PORT, 65535
    return range(low + low % 2, high, 2)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def _describe(ports: range) -> str:
    return f"{ports.start}-{ports[-1] + 1}" if ports else "an empty range"


class LocalBackend(Backend):
    name = "local"

    def __init__(
        self,
        data_dir: Path,
        *,
        python: str | None = None,
        bind: str = "127.0.0.1",
        jemalloc: bool = False,
        zygote: bool = True,
        gc_check_s: float = SYNAPSE_GC_CHECK_S,
        start_timeout_s: float = 60.0,
        ports: str = "",
    ):
        self.root = data_dir / "homeservers"
        # C3_HOMESERVER_PORTS: the client ports homeservers take (homeserver_ports below).
        self.ports = homeserver_ports(ports)
        self.work_root = work_root(data_dir)
        self.python = python or sys.executable
        self.bind = bind
        # C3_SYNAPSE_JEMALLOC: preload Debian's jemalloc into every homeserver when installed
        # (provisioner.malloc; measured in docs/benchmarks.md: off by default).
        self.jemalloc = jemalloc
        # C3_SYNAPSE_ZYGOTE: fork homeservers from a pre-imported Synapse (docs/hibernation.md).
        self.zygote = (
            Zygote(
                self.root / ".zygote",
                python=self.python,
                environment=self._environment(),
                fingerprint=fingerprint(self.python, jemalloc=jemalloc, gc_check_s=gc_check_s),
                start_timeout_s=start_timeout_s,
                warm_up=self._render_warm_up,
                gc_check_s=gc_check_s,
            )
            if zygote
            else None
        )

    def _environment(self) -> dict[str, str]:
        return ca_directory_environment(
            synapse_environment(dict(os.environ), use_jemalloc=self.jemalloc)
        )

    # Paths -----------------------------------------------------------------------------

    def tenant_dir(self, tenant_id: str) -> Path:
        return self.root / tenant_id

    def _config_path(self, tenant_id: str) -> Path:
        return self.tenant_dir(tenant_id) / "homeserver.yaml"

    def _pid_path(self, tenant_id: str) -> Path:
        return self.tenant_dir(tenant_id) / "c3-homeserver.pid"

    # Backend ---------------------------------------------------------------------------

    def allocate_port(self, taken: set[int]) -> int:
        """A free client port from ``self.ports`` whose next port (Synapse's metrics listener,
        ``synapse_metrics_address``) is free too; neither is another homeserver's pair. The
        search starts at a random pair, so workers provisioning at once rarely pick alike
        (``uq_homeservers_port`` settles it when they do)."""
        count = len(self.ports)
        start = random.randrange(count) if count else 0
        for i in range(count):
            port = self.ports[(start + i) % count]
            if not {port - 1, port, port + 1} & taken and self._pair_bindable(port):
                return port
        raise TemporaryError(
            f"no free port pair left for a homeserver in {_describe(self.ports)}"
            " (C3_HOMESERVER_PORTS)"
        )

    def port_is_free(self, port: int) -> bool:
        """The client port is one of ``self.ports`` and it and the metrics port after it are
        both free. A port outside them (a homeserver made before they were, with a port from
        the kernel's ephemeral range) is moved at its next start."""
        return port in self.ports and self._pair_bindable(port)

    def _pair_bindable(self, port: int) -> bool:
        return self._bindable(port) and self._bindable(port + 1)

    def _bindable(self, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.bind, port))
            except OSError:
                return False
        return True

    def upstream_url(self, target: HomeserverTarget) -> str:
        return f"http://{self.bind}:{target.port}"

    def render(self, target: HomeserverTarget) -> bool:
        if target.port is None:
            raise ValueError("local homeservers need a port")
        spec = spec_for(
            target,
            port=target.port,
            metrics_port=target.port + 1,
            bind_address=self.bind,
            data_dir=self.tenant_dir(target.tenant_id),
        )
        return write_homeserver_files(spec, target.secrets)

    def _render_warm_up(self, directory: Path) -> Path:
        """A homeserver config as ``render`` writes one, for no tenant and with throwaway
        secrets, for the zygote to parse once (``zygote_server._warm_up``); never started."""
        secrets = HomeserverSecrets.generate()
        target = HomeserverTarget(
            tenant_id="warm-up",
            server_name="warm-up.invalid",
            public_baseurl="http://warm-up.invalid/",
            port=None,
            limits={},
            secrets=secrets,
            appservice_url="http://warm-up.invalid/",  # tenants' homeservers have one
        )
        spec = spec_for(
            target,
            port=self.ports.start,
            metrics_port=self.ports.start + 1,
            bind_address=self.bind,
            data_dir=directory,
        )
        write_homeserver_files(spec, secrets)
        return directory / "homeserver.yaml"

    def start(self, target: HomeserverTarget) -> None:
        if self.is_running(target.tenant_id):
            return
        directory = self.tenant_dir(target.tenant_id)
        config = self._config_path(target.tenant_id)
        if not config.exists():
            raise TemporaryError("homeserver config missing; render it first")
        pid_file = self._pid_path(target.tenant_id)
        log_path = directory / "stdout.log"
        if self.zygote is not None:
            try:
                self.zygote.spawn(
                    config=config, directory=directory, log_path=log_path, pid_file=pid_file
                )
                return
            except (OSError, ZygoteError) as exc:
                log.warning("zygote unavailable (%s); starting Synapse on its own", exc)
        # `sh -c '… &'` double-forks: the homeserver is re-parented away from the worker, so
        # it neither dies with the worker nor lingers as its zombie. The shell, in its own
        # session, writes the pid file itself: a worker killed mid-start (kill -9) never
        # leaves a homeserver running that no pid file names.
        command = (
            'exec 0</dev/null; log=$1 pid=$2; shift 2; "$@" >>"$log" 2>&1 & '
            'echo $! >"$pid.new" && mv "$pid.new" "$pid"'
        )
        subprocess.run(
            ["sh", "-c", command, "sh", str(log_path), str(pid_file)] + self._program(config),
            cwd=directory,
            env=self._environment(),
            capture_output=True,
            check=True,
            start_new_session=True,
        )

    def warm(self) -> None:
        if self.zygote is not None:
            self.zygote.warm()

    def _program(self, config: Path) -> list[str]:
        """The homeserver's command line; it names ``config``, which is how a live pid is
        recognised as this tenant's homeserver."""
        return [self.python, "-m", "synapse.app.homeserver", "-c", str(config)]

    def is_running(self, tenant_id: str) -> bool:
        return self._live_pid(tenant_id) is not None

    def stop(self, tenant_id: str) -> None:
        pid = self._live_pid(tenant_id)
        if pid is None:
            self._pid_path(tenant_id).unlink(missing_ok=True)
            return
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        while time.monotonic() < deadline:
            if not alive(pid):
                break
            time.sleep(0.05)
        else:
            _signal(pid, signal.SIGKILL)
        self._pid_path(tenant_id).unlink(missing_ok=True)

    def sleep(self, tenant_id: str) -> None:
        """The process stops (SIGTERM, as ``stop``); its files, port and config stay, so
        ``wake`` is a plain start."""
        self.stop(tenant_id)

    def wake(self, target: HomeserverTarget) -> None:
        self.start(target)

    def archive(self, tenant_id: str, store: ObjectStore) -> str | None:
        directory = self.tenant_dir(tenant_id)
        if not directory.exists():
            existing = [
                item.key
                for item in store.list(object_store.archive_prefix(tenant_id))
                if item.key.endswith(".tar.gz")
            ]
            return existing[-1] if existing else None
        key = store_archive(
            store, self.work_root, tenant_id, lambda tar: tar.add(directory, arcname=tenant_id)
        )
        # Only once the archive is stored: a worker dying before this archives again.
        shutil.rmtree(directory)
        return key

    def data_dir(self, tenant_id: str) -> Path:
        return self.tenant_dir(tenant_id)

    def log_tail(self, tenant_id: str) -> str:
        try:
            text = (self.tenant_dir(tenant_id) / "stdout.log").read_text(errors="replace")
        except OSError:
            return "no log"
        return " | ".join(text.strip().splitlines()[-3:])[-500:] or "no output"

    def log_lines(self, tenant_id: str, lines: int) -> list[str]:
        """The tail of ``homeserver.log`` (Synapse's own log; its rotated predecessors are
        not read), else of ``stdout.log`` (what it printed before its logging started)."""
        directory = self.tenant_dir(tenant_id)
        for name in ("homeserver.log", "stdout.log"):
            found = _tail(directory / name, lines)
            if found:
                return found
        return []

    def usage_counts(self, tenant_id: str) -> dict[str, int] | None:
        counts = self._database_counts(
            tenant_id,
            {"messages": HOMESERVER_MESSAGES_SQL, "media_bytes": HOMESERVER_MEDIA_BYTES_SQL},
        )
        return None if counts is None else {k: int(v or 0) for k, v in counts.items()}

    def due_work(self, tenant_id: str) -> dict[str, int] | None:
        return self._database_counts(tenant_id, HOMESERVER_DUE_WORK_SQL)

    def _database_counts(self, tenant_id: str, queries: dict[str, str]) -> dict[str, int] | None:
        """One number per query from the homeserver's own database, read-only; None when it
        has none yet."""
        config = self._config_path(tenant_id)
        if not config.exists():
            return None
        # The database the homeserver itself is configured with: its own PostgreSQL
        # database or the SQLite file in its data directory.
        section = database_section(config.read_text())
        if section.get("name") == "psycopg2":
            return postgres_counts(section["args"], queries)
        database = Path(section.get("args", {}).get("database", ""))
        if not database.is_file():
            return None
        # Read-only, never creating the file; Synapse keeps writing meanwhile.
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
        try:
            return {
                name: int(conn.execute(sql).fetchone()[0] or 0) for name, sql in queries.items()
            }
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None  # Synapse has not created its schema yet
            raise
        finally:
            conn.close()

    def stop_all(self) -> list[str]:
        stopped: list[str] = []
        if not self.root.exists():
            return stopped
        for directory in sorted(self.root.iterdir()):
            if directory.is_dir() and self.is_running(directory.name):
                self.stop(directory.name)
                stopped.append(directory.name)
        if self.zygote is not None:
            self.zygote.stop()
        return stopped

    # Process identity ------------------------------------------------------------------

    def _live_pid(self, tenant_id: str) -> int | None:
        found = live_process(self._pid_path(tenant_id))
        if found is None:
            return None
        pid, cmdline = found
        if str(self._config_path(tenant_id)).encode() in cmdline:
            return pid
        if forked_in(pid, self.tenant_dir(tenant_id)):
            return pid
        return None  # the pid was recycled by an unrelated process


def postgres_usage_counts(args: dict[str, Any]) -> dict[str, int] | None:
    """Usage from the tenant's PostgreSQL database, as the tenant's own role, read-only."""
    return postgres_counts(
        args, {"messages": HOMESERVER_MESSAGES_SQL, "media_bytes": HOMESERVER_MEDIA_BYTES_SQL}
    )


def postgres_counts(args: dict[str, Any], queries: dict[str, str]) -> dict[str, int] | None:
    """One number per query from the tenant's PostgreSQL database, as the tenant's own role,
    read-only; None before Synapse created its schema."""
    params = {k: v for k, v in args.items() if not k.startswith("cp_")}  # Synapse pool options
    counts: dict[str, int] = {}
    with psycopg.connect(**params, connect_timeout=10) as conn:
        conn.read_only = True
        try:
            for name, sql in queries.items():
                row = conn.execute(sql).fetchone()
                assert row is not None
                counts[name] = int(row[0] or 0)
        except psycopg.errors.UndefinedTable:
            return None  # Synapse has not created its schema yet
    return counts


def ca_directory_environment(
    base: dict[str, str], directory: Path = SYSTEM_CA_DIRECTORY
) -> dict[str, str]:
    """``base`` with OpenSSL told to look the system's trusted CAs up in ``directory`` (hashed
    links: Debian's ``/etc/ssl/certs``), one when a verification needs it, instead of parsing
    the whole bundle whenever a TLS context is made.

    Every homeserver's start makes two such contexts (Synapse's federation and outbound HTTP
    clients), each parsing ~150 certificates: 11 ms a context, 0.5 ms looked up (measured in
    docs/hibernation.md). Debian's ``update-ca-certificates`` writes the bundle and the links
    from the same certificates, so the CAs trusted are the same. ``SSL_CERT_FILE`` then names
    no file, so that OpenSSL does not load its default bundle as well. Left alone: an
    operator's own ``SSL_CERT_FILE`` (anything but that bundle) or ``SSL_CERT_DIR``, and a
    system without such a directory."""
    bundle = str(directory / SYSTEM_CA_BUNDLE)
    if base.get("SSL_CERT_FILE", bundle) != bundle or base.get(
        "SSL_CERT_DIR", str(directory)
    ) != str(directory):
        return dict(base)
    if not (directory / SYSTEM_CA_BUNDLE).exists() or not any(directory.glob("*.0")):
        return dict(base)
    return {**base, "SSL_CERT_DIR": str(directory), "SSL_CERT_FILE": str(directory / ".none")}


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


_TAIL_CHUNK = 64 * 1024


def _tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path`` without reading the whole file (it may be 10 MiB
    before it rotates); [] when it does not exist."""
    try:
        with path.open("rb") as file:
            end = file.seek(0, os.SEEK_END)
            data, start = b"", end
            while start > 0 and data.count(b"\n") <= lines:
                start = max(0, start - _TAIL_CHUNK)
                file.seek(start)
                data = file.read(end - start)
    except OSError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]
