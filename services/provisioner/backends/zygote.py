"""The local backend's side of the Synapse zygote (``zygote_server``): start it when absent or
stale, ask it to fork a tenant's homeserver, stop it with the platform.

One zygote per data directory, under ``<data dir>/homeservers/.zygote/`` (mode 0700: only the
platform's user may ask it to start processes). Any worker process may start it; a file lock
makes that one start. Every request carries the fingerprint of the code a homeserver should run
(``fingerprint``); a zygote started from other code answers "stale" and exits, and the next
request starts a fresh one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import c3_synapse

from provisioner.backends import zygote_server
from provisioner.backends.zygote_server import MARKER, SYNAPSE_GC_CHECK_S

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 2.0
# A fork answers within milliseconds; a loaded machine may stall the zygote a few seconds.
_ANSWER_TIMEOUT_S = 30.0
_POLL_S = 0.05


class ZygoteError(Exception):
    """The zygote could not start a homeserver (the caller falls back to a plain start)."""


def fingerprint(python: str, *, jemalloc: bool, gc_check_s: float = SYNAPSE_GC_CHECK_S) -> str:
    """What a forked homeserver would run: the interpreter, the allocator, the collector checks'
    period, Synapse's version, C3's own Synapse code and the zygote's (each file's size and
    modification time)."""
    parts = [python, f"jemalloc={jemalloc}", f"gc_check_s={gc_check_s!r}"]
    try:
        parts.append(metadata.version("matrix-synapse"))
    except metadata.PackageNotFoundError:
        parts.append("synapse ?")
    package = Path(c3_synapse.__file__).parent
    for path in [*sorted(package.glob("*.py")), Path(zygote_server.__file__)]:
        stat = path.stat()
        parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


class Zygote:
    def __init__(
        self,
        directory: Path,
        *,
        python: str,
        environment: dict[str, str],
        fingerprint: str,
        start_timeout_s: float = 60.0,
        warm_up: Callable[[Path], Path] | None = None,
        gc_check_s: float = SYNAPSE_GC_CHECK_S,
    ) -> None:
        self.directory = directory
        self.python = python
        self.environment = environment
        self.fingerprint = fingerprint
        self.start_timeout_s = start_timeout_s
        # Writes a homeserver config for no tenant into the directory it is given, and names
        # it: the zygote parses it once before its first fork (zygote_server._warm_up).
        self.warm_up = warm_up
        # How often each forked homeserver checks for a due collection (zygote_server.
        # space_gc_checks; C3_SYNAPSE_GC_CHECK_S); part of ``fingerprint``.
        self.gc_check_s = gc_check_s

    @property
    def socket_path(self) -> Path:
        return self.directory / "zygote.sock"

    @property
    def pid_path(self) -> Path:
        return self.directory / "zygote.pid"

    # Homeservers ----------------------------------------------------------------------------

    def spawn(self, *, config: Path, directory: Path, log_path: Path, pid_file: Path) -> int:
        """Fork a homeserver from the zygote (started first when absent or stale); its pid."""
        request = {  # absolute: the homeserver moves into its directory first
            "fingerprint": self.fingerprint,
            "config": str(config.resolve()),
            "directory": str(directory.resolve()),
            "log": str(log_path.resolve()),
            "pid_file": str(pid_file.resolve()),
        }
        for _ in range(3):
            try:
                answer = self._ask(request)
            except (FileNotFoundError, ConnectionRefusedError):
                self.start()
                continue
            if answer.get("error") == "stale":
                log.info("the Synapse zygote runs other code; starting a fresh one")
                self.start()
                continue
            if isinstance(answer.get("pid"), int):
                return int(answer["pid"])
            raise ZygoteError(str(answer.get("error") or answer))
        raise ZygoteError("the Synapse zygote did not answer")

    # The zygote itself ------------------------------------------------------------------------

    def warm(self) -> None:
        """Start the zygote in the background unless one runs already (a worker calls this
        when it starts: the first wake then finds Synapse imported)."""
        with contextlib.suppress(OSError, ZygoteError):
            with self._lock():
                if self._live_pid() is None or self._answers() not in (None, self.fingerprint):
                    self._launch()

    def start(self) -> None:
        """Make sure a zygote with this code listens (one start however many workers ask at
        once): wait for one still importing, replace a stale or dead one."""
        with self._lock():
            answer = self._answers()
            if answer == self.fingerprint:
                return
            pid, launched = self._live_pid(), False
            if pid is None or answer is not None:  # none, or one running other code
                pid, launched = self._launch(), True
            deadline = time.monotonic() + self.start_timeout_s
            while time.monotonic() < deadline:
                if self._answers() == self.fingerprint:
                    return
                if not alive(pid):
                    if launched:
                        raise ZygoteError("the Synapse zygote exited: " + self._log_tail())
                    # The one we waited for was on its way out (it answered "stale").
                    pid, launched = self._launch(), True
                time.sleep(_POLL_S)
            raise ZygoteError(f"the Synapse zygote did not listen within {self.start_timeout_s}s")

    def stop(self) -> bool:
        """Stop the zygote (the homeservers it forked live on); whether one was running."""
        pid = self._live_pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pid_path.unlink(missing_ok=True)
        return True

    def _current(self) -> bool:
        """A zygote answers on the socket with this code's fingerprint."""
        return self._answers() == self.fingerprint

    def _answers(self) -> str | None:
        """The fingerprint of the zygote answering on the socket; None when none answers (not
        started, or still importing)."""
        try:
            answer = self._ask({"ping": True})
        except OSError:
            return None
        return str(answer.get("fingerprint"))

    def _launch(self) -> int:
        """Start the zygote detached (re-parented to init, in a session of its own, as the
        homeservers are); its pid."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.stop()  # a stale one, if any
        command = (
            'exec 0</dev/null; log=$1 pid=$2; shift 2; "$@" >>"$log" 2>&1 & '
            'echo $! >"$pid.new" && mv "$pid.new" "$pid"'
        )
        program = [
            self.python,
            "-m",
            MARKER,
            "--socket",
            str(self.socket_path),
            "--fingerprint",
            self.fingerprint,
            "--gc-check-period",
            repr(self.gc_check_s),
        ]
        if self.warm_up is not None:
            try:
                program += ["--warm-config", str(self.warm_up(self.directory / "warm-up"))]
            except Exception as exc:  # noqa: BLE001 — only speed is at stake
                log.warning("the Synapse zygote starts without a warm-up config: %s", exc)
        subprocess.run(
            ["sh", "-c", command, "sh", str(self.directory / "zygote.log"), str(self.pid_path)]
            + program,
            cwd=self.directory,
            env=self.environment,
            capture_output=True,
            check=True,
            start_new_session=True,
        )
        pid = int(self.pid_path.read_text().strip())
        log.info("started the Synapse zygote (pid %d)", pid)
        return pid

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(_CONNECT_TIMEOUT_S)
            sock.connect(str(self.socket_path))
            sock.settimeout(_ANSWER_TIMEOUT_S)
            sock.sendall(json.dumps(request).encode() + b"\n")
            try:
                answer = json.loads(zygote_server.read_line(sock))
            except ValueError:
                raise ConnectionRefusedError("the zygote hung up") from None
        return answer if isinstance(answer, dict) else {}

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / "zygote.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)

    def _live_pid(self) -> int | None:
        found = live_process(self.pid_path)
        if found is None or str(self.socket_path).encode() not in found[1]:
            return None  # none, or the pid was recycled
        return found[0]

    def _log_tail(self) -> str:
        try:
            text = (self.directory / "zygote.log").read_text(errors="replace")
        except OSError:
            return "no log"
        return " | ".join(text.strip().splitlines()[-3:])[-500:] or "no output"


def live_process(pid_file: Path) -> tuple[int, list[bytes]] | None:
    """The live process a pid file names, with its command line (to tell it from a process
    that got a recycled pid); None when the file or the process is gone."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not alive(pid):
        return None
    try:
        return pid, Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")
    except OSError:
        return None


def forked_in(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is a homeserver the zygote forked for ``directory``: the zygote's
    command line, the tenant's directory as its working directory."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return MARKER.encode() in cmdline and cwd == os.path.realpath(directory)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
