"""A pre-imported Synapse that forks homeservers: the local backend's fast start.

Importing Synapse is most of a homeserver's start — 1.3 s of CPU on a quiet 2-core machine,
5–11 s at load average 15 — and every wake of a sleeping homeserver paid it again. The zygote
imports Synapse (and the modules C3 loads into it) once; each homeserver is then a ``fork()`` of
it that only reads its config, opens its database and starts listening. The forked homeservers
also share the imported code's memory pages with the zygote until they write to them.

**The protocol.** The zygote listens on a Unix socket (a directory only its owner can enter).
A request is one JSON line ``{"fingerprint", "config", "directory", "log", "pid_file"}``; the
answer one JSON line, ``{"pid": N}`` or ``{"error": "…"}``. A request with another
``fingerprint`` (the code or the interpreter changed since the zygote started: the local
backend's ``zygote_fingerprint``) is answered ``{"error": "stale"}`` and the zygote exits, so
the next start runs the new code.

**A homeserver's start.** The zygote forks twice (the homeserver is re-parented to init and
lives in a session of its own, as the exec path's ``sh -c '… &'`` does); the grandchild moves
into the tenant's directory, sends its output to ``log``, writes its own pid file (so a
homeserver is never left running without one), gives itself a fresh Twisted reactor state (the
epoll instance and the waker pipe made at import are kernel objects shared with the zygote and
every sibling), and runs ``synapse.app.homeserver.main`` with ``-c config``. The local backend
recognises such a process by its command line (the zygote's) and its working directory (the
tenant's).

**Warm-up.** Before its first fork the zygote parses one homeserver config (``--warm-config``,
rendered by the local backend for no tenant), so that a forked homeserver finds done what every
start would repeat: see ``_warm_up``.

**Collector checks.** A forked homeserver looks for a due garbage collection once a second
(``--gc-check-period``) rather than ten times: see ``space_gc_checks``.

**Lifetime.** The zygote serves until it is told to stop (SIGTERM: ``LocalBackend.stop_all``),
answers a stale request, or finds its socket gone (its data directory was removed).

Only the standard library, Twisted, Synapse (with jinja2, jsonschema and PyYAML, its own
dependencies) and C3's Synapse module are imported here (it runs
with the interpreter Synapse runs with, ``C3_SYNAPSE_PYTHON``); ``python -m
provisioner.backends.zygote_server --socket PATH --fingerprint F [--warm-config PATH]
[--gc-check-period S] [--preload MODULE ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import logging
import os
import signal
import socket
import sys
import time
import types
from functools import partial
from typing import Any

# The module name in the command line: how a forked homeserver is told from other processes.
MARKER = "provisioner.backends.zygote_server"
_MAX_REQUEST = 64 * 1024
_IDLE_CHECK_S = 5.0
# How often a forked homeserver checks whether a garbage collection is due (Synapse: 0.1 s;
# space_gc_checks): C3_SYNAPSE_GC_CHECK_S.
SYNAPSE_GC_CHECK_S = 1.0
# Imported before the first fork: Synapse's entry point, its storage and handlers (imported
# lazily by the homeserver's set-up otherwise), both database drivers, and the media servlets
# (Synapse imports them as it builds the client listener of a homeserver that serves media:
# the one module a forked start still imported, 1.2 ms of CPU a start; `strace -f` on the
# zygote during a wake, docs/benchmarks.md).
PRELOAD = (
    "synapse.app.homeserver",
    "synapse.rest.client.media",
    "synapse.server",
    "synapse.storage.databases.main",
    "synapse.storage.engines",
    "sqlite3",
    "psycopg2",
    "c3_synapse.confinement",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MARKER}")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--fingerprint", required=True)
    parser.add_argument("--preload", action="append", default=[])
    parser.add_argument("--warm-config")
    parser.add_argument("--gc-check-period", type=float, default=SYNAPSE_GC_CHECK_S)
    args = parser.parse_args(argv)
    for name in (*PRELOAD, *args.preload):
        with contextlib.suppress(ImportError):  # e.g. psycopg2 where only SQLite is used
            importlib.import_module(name)
    space_gc_checks(args.gc_check_period)
    if args.warm_config:
        _warm_up(args.warm_config)
    os.umask(0o077)  # its socket and log: the platform's user only
    listener = _listen(args.socket)
    inode = os.stat(args.socket).st_ino  # the socket file's (fstat on the socket says sockfs')
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # What import made lives as long as the process: never scanned by the collector again, and
    # pages the forked homeservers can keep sharing (a collection writes to every object).
    gc.collect()
    gc.freeze()
    print(f"zygote ready (pid {os.getpid()})", flush=True)
    try:
        _serve(listener, args.socket, inode, args.fingerprint)
    finally:
        with contextlib.suppress(OSError):
            if os.stat(args.socket).st_ino == inode:  # not a successor's
                os.unlink(args.socket)


def space_gc_checks(period_s: float) -> None:
    """Have every forked homeserver look for a due garbage collection every ``period_s``
    seconds instead of Synapse's 0.1 s.

    Synapse turns Python's automatic collector off and runs its own check on a timer
    (``synapse.metrics._gc.install_gc_manager``): ten wake-ups a second in every homeserver,
    which were two thirds of an idle homeserver's CPU (0.0031-0.0037 of a core against 0.0013
    with a 1 s check, docs/benchmarks.md) — and a sleeping platform keeps a round's worth of idle
    homeservers awake. The check collects a generation only when Python's threshold is passed
    *and* Synapse's minimum time since that generation's last collection (1 s, 10 s, 30 s) has
    gone by: a collection that falls due runs at most ``period_s`` later than it would have
    (gen-0 collections, at most one a second in Synapse, come every 1-2 s instead).

    Synapse's own function still runs (its metrics, ``gc.disable()``, the check itself); only
    the period its timer is started with is raised to ``period_s`` (a smaller period than
    Synapse's is not honoured). Without Synapse's app module (another Synapse, a test) nothing
    changes."""
    try:
        from synapse.app import _base
        from twisted.internet import task
    except ImportError:
        return
    install = getattr(_base, "install_gc_manager", None)
    if install is None or period_s <= 0:
        return

    def install_gc_manager() -> None:
        looping = task.LoopingCall

        class SpacedChecks(looping):  # type: ignore[misc,valid-type]
            def start(self, interval: float, now: bool = True) -> Any:
                return super().start(max(interval, period_s), now)

        task.LoopingCall = SpacedChecks  # type: ignore[misc]
        try:
            install()
        finally:
            task.LoopingCall = looping  # type: ignore[misc]

    _base.install_gc_manager = install_gc_manager


def _warm_up(config: str) -> None:
    """Do once, before the first fork, what every homeserver's start would repeat.

    Parsing a homeserver's config was most of a forked start's CPU (0.15–0.3 s a wake, measured
    in docs/hibernation.md), and most of that is work whose result is the same for every
    tenant. The zygote parses one config of the same shape (``config``: rendered by the local
    backend for no tenant, with throwaway secrets; nothing is started from it), which

    - leaves everything Synapse and its libraries build on first use (lazily imported modules,
      the metaschemas jsonschema loads, Jinja's lexers, compiled regular expressions) built;
    - fills the caches ``_share_start_work`` puts in: the schema checks and compiled templates.

    A failure here costs only speed: it is logged and the zygote serves as before."""
    _share_start_work()
    here = os.getcwd()
    try:
        from synapse.config import cache
        from synapse.config.homeserver import HomeServerConfig

        factor, resize = (
            cache.properties.default_factor_size,
            cache.properties.resize_all_caches_func,
        )
        os.chdir(os.path.dirname(config))
        HomeServerConfig.load_config("Synapse Homeserver", ["-c", config])
        # The parse set the cache factor globally (and kept the config to resize caches with):
        # as imported again, so nothing of the warm-up config outlives it.
        cache.properties.default_factor_size, cache.properties.resize_all_caches_func = (
            factor,
            resize,
        )
        print("warmed up on a homeserver config", flush=True)
    except Exception as exc:  # noqa: BLE001 — only speed is at stake
        print(f"warm-up failed, serving without it: {exc!r}", flush=True)
    finally:
        os.chdir(here)


def _share_start_work() -> None:
    """Caches, filled in the zygote and read by every forked homeserver, for start-up work
    whose result depends only on its input:

    - **schema checks.** ``jsonschema.validate`` first checks the schema against its
      metaschema (30 ms for the OIDC providers' schema alone, on every start, though the
      schemas are Synapse's constants). A schema that passed once is not checked again; one
      that fails is checked (and fails) every time, as before.
    - **compiled templates.** Synapse's config compiles ~20 Jinja templates (e-mails, SSO
      pages) on every start; its template environments get an in-memory bytecode cache, Jinja's
      own mechanism, keyed by template name and file and checked against the source's hash.
    - **IP block lists.** ``generate_ip_set`` builds the networks a homeserver may not reach
      (the platform's block list and Synapse's defaults, each with its IPv6 forms) in ~13 ms
      with ``netaddr``, twice a start, for the same lists on every tenant; each set is built
      once and copied (microseconds).
    - **YAML.** ``yaml.safe_load`` uses PyYAML's libyaml loader (``CSafeLoader``, 8× faster on
      a homeserver config, the same safe constructors) where PyYAML was built with it.
    """
    import jinja2
    import yaml
    from jsonschema import validators

    for validator in set(validators._VALIDATORS.values()):  # noqa: SLF001
        validator.check_schema = staticmethod(_checked_once(validator.check_schema))

    from synapse.config import _base, repository, server

    _base.jinja2 = _with_bytecode_cache(jinja2)  # type: ignore[attr-defined]
    server.generate_ip_set = repository.generate_ip_set = _ip_sets_built_once(
        server.generate_ip_set
    )
    if getattr(yaml, "__with_libyaml__", False):
        yaml.safe_load = partial(yaml.load, Loader=yaml.CSafeLoader)


def _checked_once(check: Any) -> Any:
    passed: set[str] = set()

    def check_schema(schema: Any, *args: Any, **kwargs: Any) -> None:
        key = json.dumps([schema, repr(args), repr(kwargs)], sort_keys=True, default=repr)
        if key not in passed:
            check(schema, *args, **kwargs)
            passed.add(key)

    return check_schema


def _ip_sets_built_once(generate: Any) -> Any:
    """Synapse's ``generate_ip_set`` building each set of networks once (a copy each time:
    the caller may change its own)."""
    built: dict[tuple[tuple[Any, ...], tuple[Any, ...]], Any] = {}

    def generate_ip_set(
        ip_addresses: Any, extra_addresses: Any = None, config_path: Any = None
    ) -> Any:
        key = (tuple(ip_addresses or ()), tuple(extra_addresses or ()))
        try:
            found = built.get(key)
        except TypeError:  # not addresses: Synapse's own error, as before
            return generate(*key, config_path)
        if found is None:  # a bad address raises, every time
            found = built[key] = generate(*key, config_path)
        return found.copy()

    return generate_ip_set


def _with_bytecode_cache(jinja2: Any) -> Any:
    """``jinja2`` as Synapse's config module sees it: the same, but its environments share one
    bytecode cache (only those: every one there is made alike, see ``read_templates``)."""

    class SharedCode(jinja2.BytecodeCache):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.code: dict[str, tuple[str, Any]] = {}

        def load_bytecode(self, bucket: Any) -> None:
            found = self.code.get(bucket.key)
            if found is not None and found[0] == bucket.checksum:
                bucket.code = found[1]

        def dump_bytecode(self, bucket: Any) -> None:
            self.code[bucket.key] = (bucket.checksum, bucket.code)

    shared = SharedCode()

    class Environment(jinja2.Environment):  # type: ignore[misc,name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("bytecode_cache", shared)
            super().__init__(*args, **kwargs)

    module = types.ModuleType(jinja2.__name__)
    module.__dict__.update(jinja2.__dict__)
    module.Environment = Environment  # type: ignore[attr-defined]
    return module


def _listen(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a dead zygote's socket
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    listener.settimeout(_IDLE_CHECK_S)
    return listener


def _serve(listener: socket.socket, path: str, inode: int, fingerprint: str) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            try:
                if os.stat(path).st_ino != inode:
                    return  # another zygote took the socket's place
            except FileNotFoundError:
                return  # the data directory is gone
            continue
        with conn:
            conn.settimeout(10.0)
            try:
                request = _read_request(conn)
            except (OSError, ValueError) as exc:
                _answer(conn, {"error": f"bad request: {exc}"})
                continue
            if request.get("ping"):
                _answer(conn, {"fingerprint": fingerprint})
                continue
            if request.get("fingerprint") != fingerprint:
                _answer(conn, {"error": "stale"})
                return
            began = time.monotonic()
            try:
                pid = _spawn(request, listener, conn)
            except OSError as exc:
                _answer(conn, {"error": f"fork failed: {exc}"})
                continue
            _answer(conn, {"pid": pid})
            took = (time.monotonic() - began) * 1000
            print(
                f"forked homeserver {pid} in {took:.0f} ms for {request['directory']}", flush=True
            )


def read_line(conn: socket.socket) -> bytes:
    """One newline-ended message of the protocol (both sides read them so); what came when the
    peer hung up early."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_REQUEST:
            raise ValueError("too long")
    return data


def _read_request(conn: socket.socket) -> dict[str, Any]:
    request = json.loads(read_line(conn))
    if not isinstance(request, dict):
        raise ValueError("not an object")
    if request.get("ping"):
        return request
    for key in ("config", "directory", "log", "pid_file"):
        if not isinstance(request.get(key), str):
            raise ValueError(f"{key} missing")
    return dict(request)


def _answer(conn: socket.socket, answer: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(answer).encode() + b"\n")


def _spawn(request: dict[str, Any], listener: socket.socket, conn: socket.socket) -> int:
    """Fork the homeserver (twice: it is re-parented to init); its pid once it wrote its pid
    file, or the error that stopped it before."""
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # the intermediate: a new session, then the homeserver, then gone
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork() == 0:
                _become_homeserver(request, ready_w, (listener, conn))
            os._exit(0)
        except BaseException:  # noqa: BLE001 — never return into the zygote's loop
            os._exit(1)
    os.close(ready_w)
    try:
        os.waitpid(child, 0)
        with os.fdopen(ready_r, "rb") as ready:
            told = ready.read().decode(errors="replace")
    except OSError:
        told = ""
    if not told.isdigit():
        raise OSError(told or "the homeserver exited before writing its pid file")
    return int(told)


def _become_homeserver(request: dict[str, Any], ready_w: int, inherited: tuple[Any, ...]) -> None:
    code: Any = 1
    try:
        for sock in inherited:
            sock.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.chdir(request["directory"])
        devnull = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(devnull)
        os.close(log)
        _write_pid_file(request["pid_file"])
        os.write(ready_w, str(os.getpid()).encode())
        os.close(ready_w)
        ready_w = -1
        _fresh_reactor()
        # The zygote's heap stays frozen: Synapse's start collects everything (gc.collect(),
        # then gc.freeze()), which took 0.8 s of every wake over the imported objects, and a
        # collection writes to every object it visits (the pages shared with the zygote).
        from synapse.app import homeserver

        sys.argv = [homeserver.__file__, "-c", request["config"]]
        homeserver.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:  # noqa: BLE001 — the log is the homeserver's stdout.log
        print(f"homeserver failed to start: {exc!r}", file=sys.stderr)
    finally:
        if ready_w >= 0:
            with contextlib.suppress(OSError):
                os.write(ready_w, b"could not start the homeserver")
        with contextlib.suppress(Exception):
            logging.shutdown()  # Synapse's log handlers flush (os._exit runs no atexit)
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def _write_pid_file(path: str) -> None:
    fresh = path + ".new"
    with open(fresh, "w") as file:
        file.write(f"{os.getpid()}\n")
    os.replace(fresh, path)


def _fresh_reactor() -> None:
    """Give this process a reactor of its own: the epoll instance and the waker pipe Twisted
    made when Synapse's import installed the reactor are shared with the zygote and every
    sibling (registrations and wake-ups would cross between homeservers)."""
    from select import epoll

    from twisted.internet import reactor

    if type(reactor).__name__ != "EPollReactor" or getattr(reactor, "running", False):
        raise RuntimeError(f"cannot renew a {type(reactor).__name__} after fork")
    # Only this process's copies are closed: nothing is unregistered from the shared epoll.
    reactor._poller.close()  # type: ignore[attr-defined]
    reactor._poller = epoll(1024)  # type: ignore[attr-defined]
    reactor._reads.clear()  # type: ignore[attr-defined]
    reactor._writes.clear()  # type: ignore[attr-defined]
    reactor._selectables.clear()  # type: ignore[attr-defined]
    waker = reactor.waker  # type: ignore[attr-defined]
    if waker is not None:
        reactor._internalReaders.discard(waker)  # type: ignore[attr-defined]
        waker.connectionLost(None)  # closes the pipe's two ends
        reactor.waker = None  # type: ignore[attr-defined]
    reactor.installWaker()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
