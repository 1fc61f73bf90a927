"""Synapse footprint benchmark: one tenant homeserver's memory, idle and working, with and without
jemalloc and under several cache settings (issue 16, "Synapse's own footprint").

For each variant, one run:

1. renders a tenant homeserver's config exactly as the provisioner does
   (``provisioner.synapse_config.write_homeserver_files``; SQLite, the local default) with the
   variant's plan limits (``synapse_cache_factor``, ``synapse_event_cache_size``,
   ``synapse_cache_max_memory_mib``), and starts ``python -m synapse.app.homeserver`` with the
   variant's environment (``LD_PRELOAD`` of Debian's libjemalloc2 for the jemalloc variants);
2. **idle**: once ``/health`` answers, waits until the resident size has stopped growing (no
   change above 1 % for ``--settle`` seconds; at most 90 s) and reads ``/proc/<pid>/smaps_rollup``:
   RSS, PSS and private (clean + dirty) memory;
3. **working**: registers ``--users`` users (shared-secret admin registration), has them create
   ``--rooms`` public rooms and join them all, sends ``--messages`` messages round-robin over
   users and rooms, with every user syncing (initial sync, then an incremental sync after every
   ``--users`` messages) and a final initial sync per user; reads memory right after, and
   again once it settled (the "working, settled" columns: what the process keeps);
4. **chatting** (``--chat-seconds``, off by default): two more users in a private room, each
   long-polling ``/sync`` and sending ``--chat-rate`` messages a second, as each active tenant
   of ``density_bench.py`` does; the homeserver's CPU time (``/proc/<pid>/stat``) per message,
   less what it used over as long a time before with the same syncs parked and no message
   (its timers): the CPU one message costs a homeserver with two clients syncing;
5. stops the homeserver and removes its directory.

Prints one table (MiB) and writes ``benchmarks/results/synapse-footprint-<UTC stamp>.json``.
Variants run one after another, so they do not compete for the CPU; ``--repeat`` runs the whole
list again (interleaved), and the table shows the median per variant.

Usage (from the repository root)::

    .venv/bin/python benchmarks/synapse_footprint_bench.py
    .venv/bin/python benchmarks/synapse_footprint_bench.py --variants glibc jemalloc --repeat 3
    .venv/bin/python benchmarks/synapse_footprint_bench.py --variants glibc \
        --chat-seconds 30 --chat-rate 1 --repeat 3                  # CPU per message
"""

from __future__ import annotations

import argparse
import os
import platform as host_platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "services"))

from benchmarks.harness import stop_on_sigterm, write_results  # noqa: E402
from benchmarks.nginx import cpu_seconds  # noqa: E402
from platform_core.synapse_admin import registration_mac  # noqa: E402
from provisioner.malloc import JEMALLOC_CONF, jemalloc_path  # noqa: E402
from provisioner.synapse_config import (  # noqa: E402
    HomeserverSecrets,
    HomeserverSpec,
    write_homeserver_files,
)

START_TIMEOUT_S = 90.0
SETTLE_MAX_S = 90.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class Variant:
    name: str
    jemalloc: bool = False
    limits: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    # Synapse's collector checks spaced to this period, as in a homeserver forked from the
    # zygote (zygote_server.space_gc_checks, C3_SYNAPSE_GC_CHECK_S); None: Synapse's 0.1 s.
    gc_check_s: float | None = None


def _variants() -> dict[str, Variant]:
    found = [
        # Synapse's own defaults: global_factor 0.5, event_cache_size 10K.
        Variant("glibc", limits={"synapse_cache_factor": 0.5}),
        Variant(
            "glibc-arena2", limits={"synapse_cache_factor": 0.5}, env={"MALLOC_ARENA_MAX": "2"}
        ),
        Variant("jemalloc", jemalloc=True, limits={"synapse_cache_factor": 0.5}),
    ]
    for factor in (1.0, 0.25, 0.1):
        found.append(
            Variant(f"jemalloc-f{factor:g}", jemalloc=True, limits={"synapse_cache_factor": factor})
        )
    found.append(Variant("glibc-f0.1", limits={"synapse_cache_factor": 0.1}))
    found.append(Variant("glibc-gc1", limits={"synapse_cache_factor": 0.5}, gc_check_s=1.0))
    found.append(
        Variant(
            "jemalloc-f0.25-ev2k",
            jemalloc=True,
            limits={"synapse_cache_factor": 0.25, "synapse_event_cache_size": 2000},
        )
    )
    found.append(
        Variant(
            "jemalloc-f0.5-auto64",
            jemalloc=True,
            limits={"synapse_cache_factor": 0.5, "synapse_cache_max_memory_mib": 64},
        )
    )
    found.append(
        Variant(
            "jemalloc-f0.25-decay",
            jemalloc=True,
            limits={"synapse_cache_factor": 0.25},
            # Return freed pages to the kernel within a second instead of jemalloc's 10 s.
            env={"MALLOC_CONF": "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"},
        )
    )
    # jemalloc with fewer arenas (Synapse is one reactor thread and a small database thread
    # pool; jemalloc's default is 4 per CPU) and without per-thread caches, returning pages fast.
    found.append(
        Variant(
            "jemalloc-narenas1",
            jemalloc=True,
            limits={"synapse_cache_factor": 0.5},
            env={"MALLOC_CONF": "narenas:1"},
        )
    )
    found.append(
        Variant(
            "jemalloc-lean",
            jemalloc=True,
            limits={"synapse_cache_factor": 0.5},
            env={"MALLOC_CONF": JEMALLOC_CONF},  # what C3_SYNAPSE_JEMALLOC=true ships,
        )
    )
    return {v.name: v for v in found}


VARIANTS = _variants()
# Synapse's entry point after zygote_server.space_gc_checks, as a forked homeserver runs it.
_SPACED_GC = (
    "import sys\n"
    "from provisioner.backends.zygote_server import space_gc_checks\n"
    "space_gc_checks(float(sys.argv[1]))\n"
    "from synapse.app import homeserver\n"
    "sys.argv = [homeserver.__file__, '-c', sys.argv[2]]\n"
    "homeserver.main()\n"
)


# Memory ---------------------------------------------------------------------------------


def memory_of(pid: int) -> dict[str, float]:
    """RSS, PSS, private and anonymous memory (MiB) from ``/proc/<pid>/smaps_rollup``.
    Anonymous (the heap) does not depend on which other processes share library pages."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            fields[name.strip()] = int(parts[0])
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {
        "rss": fields.get("Rss", 0) / 1024,
        "pss": fields.get("Pss", 0) / 1024,
        "private": private / 1024,
        "anon": fields.get("Anonymous", 0) / 1024,
    }


def settled_memory(pid: int, settle_s: float) -> dict[str, float]:
    """Memory once RSS has changed by at most 1 % for ``settle_s`` (at most SETTLE_MAX_S)."""
    deadline = time.monotonic() + SETTLE_MAX_S
    window: list[float] = []
    while True:
        rss = memory_of(pid)["rss"]
        window = [*window, rss][-max(2, int(settle_s * 2)) :]
        steady = len(window) >= settle_s * 2 and max(window) - min(window) <= 0.01 * max(window)
        if steady or time.monotonic() > deadline:
            return memory_of(pid)
        time.sleep(0.5)


def maps_jemalloc(pid: int) -> bool:
    return "libjemalloc" in Path(f"/proc/{pid}/maps").read_text()


# One homeserver -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Homeserver:
    def __init__(self, variant: Variant, root: Path):
        self.variant = variant
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.secrets = HomeserverSecrets.generate()
        self.spec = HomeserverSpec(
            server_name="footprint.bench",
            public_baseurl=self.base_url + "/",
            port=self.port,
            bind_address="127.0.0.1",
            data_dir=root / variant.name,
            limits=dict(variant.limits),
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        write_homeserver_files(self.spec, self.secrets)
        env = {**os.environ, **self.variant.env}
        env.pop("LD_PRELOAD", None)
        if self.variant.jemalloc:
            path = jemalloc_path()
            if path is None:
                raise RuntimeError("libjemalloc2 is not installed (apt-get install libjemalloc2)")
            env["LD_PRELOAD"] = str(path)
        config = self.spec.data_dir / "homeserver.yaml"
        log = (self.spec.data_dir / "stdout.log").open("ab")
        command = [sys.executable, "-m", "synapse.app.homeserver", "-c", str(config)]
        if self.variant.gc_check_s is not None:
            env["PYTHONPATH"] = str(REPO_ROOT / "services")
            command = [sys.executable, "-c", _SPACED_GC, str(self.variant.gc_check_s), str(config)]
        self.process = subprocess.Popen(
            command,
            cwd=self.spec.data_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"synapse exited {self.process.returncode}; see {log.name}")
            try:
                if httpx.get(self.base_url + "/health", timeout=1).status_code == 200:
                    return self.process.pid
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("synapse did not answer /health in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# Workload ---------------------------------------------------------------------------------


def register(client: httpx.Client, shared_secret: str, username: str) -> str:
    nonce = client.get("/_synapse/admin/v1/register").json()["nonce"]
    password = uuid.uuid4().hex
    body = {
        "nonce": nonce,
        "username": username,
        "password": password,
        "admin": False,
        "mac": registration_mac(shared_secret, nonce, username, password, False),
    }
    response = client.post("/_synapse/admin/v1/register", json=body)
    response.raise_for_status()
    return str(response.json()["access_token"])


def workload(hs: Homeserver, users: int, rooms: int, messages: int) -> dict[str, Any]:
    """Users, rooms, messages and syncs; returns counts and the send latency."""
    client = httpx.Client(base_url=hs.base_url, timeout=60)
    try:
        tokens = [
            register(client, hs.secrets.registration_shared_secret, f"user{n}")
            for n in range(users)
        ]
        auth = [{"Authorization": f"Bearer {t}"} for t in tokens]
        room_ids: list[str] = []
        for n in range(rooms):
            response = client.post(
                "/_matrix/client/v3/createRoom",
                json={"preset": "public_chat", "name": f"room {n}"},
                headers=auth[n % users],
            )
            response.raise_for_status()
            room_ids.append(response.json()["room_id"])
        for n in range(users):
            for room_id in room_ids:
                response = client.post(f"/_matrix/client/v3/join/{room_id}", headers=auth[n])
                response.raise_for_status()
        since: list[str | None] = [None] * users

        def sync(n: int) -> None:
            params = {"timeout": "0"}
            if since[n]:
                params["since"] = since[n]  # type: ignore[assignment]
            response = client.get("/_matrix/client/v3/sync", params=params, headers=auth[n])
            response.raise_for_status()
            since[n] = response.json()["next_batch"]

        for n in range(users):
            sync(n)
        send_ms: list[float] = []
        for m in range(messages):
            n = m % users
            room_id = room_ids[m % rooms]
            started = time.perf_counter()
            response = client.put(
                f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{m}",
                json={"msgtype": "m.text", "body": f"message {m} " + "lorem ipsum " * 8},
                headers=auth[n],
            )
            send_ms.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            if n == users - 1:
                for k in range(users):
                    sync(k)
        for n in range(users):  # a client signing in anew: a full initial sync
            response = client.get("/_matrix/client/v3/sync", headers=auth[n])
            response.raise_for_status()
        send_ms.sort()
        return {
            "users": users,
            "rooms": rooms,
            "messages": messages,
            "send_p50_ms": statistics.median(send_ms),
            "send_p99_ms": send_ms[min(len(send_ms) - 1, int(len(send_ms) * 0.99))],
        }
    finally:
        client.close()


def chat(hs: Homeserver, pid: int, seconds: float, rate: float) -> dict[str, Any]:
    """Two users chatting (step 4 of the module docstring): the homeserver's CPU per message."""
    secret = hs.secrets.registration_shared_secret
    with httpx.Client(base_url=hs.base_url, timeout=60) as client:
        auth = [{"Authorization": f"Bearer {register(client, secret, f'chat{n}')}"} for n in (0, 1)]
        created = client.post(
            "/_matrix/client/v3/createRoom", json={"preset": "private_chat"}, headers=auth[0]
        )
        room_id = created.raise_for_status().json()["room_id"]
        client.post(
            f"/_matrix/client/v3/rooms/{room_id}/invite",
            json={"user_id": f"@chat1:{hs.spec.server_name}"},
            headers=auth[0],
        ).raise_for_status()
        client.post(f"/_matrix/client/v3/join/{room_id}", headers=auth[1]).raise_for_status()
    stop = threading.Event()
    chatting = threading.Event()
    counts = {"syncs": 0, "sent": 0}
    failures: list[BaseException] = []
    lock = threading.Lock()

    def syncer(n: int) -> None:
        since: str | None = None
        with httpx.Client(base_url=hs.base_url, timeout=60) as own:
            while not stop.is_set():
                params = {"timeout": "5000", **({"since": since} if since else {})}
                response = own.get("/_matrix/client/v3/sync", params=params, headers=auth[n])
                since = response.raise_for_status().json()["next_batch"]
                with lock:
                    counts["syncs"] += 1

    def sender(n: int) -> None:
        chatting.wait()
        began = time.monotonic()
        with httpx.Client(base_url=hs.base_url, timeout=60) as own:
            m = 0
            while not stop.wait(max(0.0, began + m / rate - time.monotonic())):
                m += 1
                own.put(
                    f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/c{n}-{m}",
                    json={"msgtype": "m.text", "body": f"message {m} " + "lorem ipsum " * 8},
                    headers=auth[n],
                ).raise_for_status()
                with lock:
                    counts["sent"] += 1

    def failing_loud(step: Any, n: int) -> None:
        """A client that fails stops the measurement (its numbers would be too low)."""
        try:
            step(n)
        except BaseException as exc:  # noqa: BLE001 — reported by chat() after the join
            failures.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=failing_loud, args=(step, n))
        for step in (syncer, sender)
        for n in (0, 1)
    ]
    for thread in threads:
        thread.start()
    try:
        # Both initial syncs answered: from here each client's /sync is parked.
        deadline = time.monotonic() + START_TIMEOUT_S
        while counts["syncs"] < 2 and not stop.is_set() and time.monotonic() < deadline:
            stop.wait(0.05)
        idle_from = cpu_seconds(pid)
        stop.wait(seconds)  # the same syncs parked, no message: the homeserver's own timers
        idle_cpu = cpu_seconds(pid) - idle_from
        with lock:
            syncs_from = counts["syncs"]
        chat_from = cpu_seconds(pid)
        began = time.monotonic()
        chatting.set()
        stop.wait(seconds)
        chat_cpu = cpu_seconds(pid) - chat_from
        took = time.monotonic() - began
        with lock:
            sent, syncs = counts["sent"], counts["syncs"] - syncs_from
    finally:
        stop.set()
        chatting.set()
        for thread in threads:
            thread.join()
    if failures:
        raise RuntimeError(f"a chatting client failed: {failures[0]!r}") from failures[0]
    return {
        "chat_messages": sent,
        "chat_syncs": syncs,
        "chat_cores": chat_cpu / took,
        "idle_cores": idle_cpu / seconds,
        "chat_cpu_ms_per_message": 1000 * (chat_cpu - idle_cpu * took / seconds) / max(1, sent),
    }


def run_variant(variant: Variant, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    hs = Homeserver(variant, root)
    try:
        started = time.perf_counter()
        pid = hs.start()
        start_s = time.perf_counter() - started
        idle = settled_memory(pid, args.settle)
        work_started = time.perf_counter()
        work = workload(hs, args.users, args.rooms, args.messages)
        work_s = time.perf_counter() - work_started
        working = memory_of(pid)
        working_settled = settled_memory(pid, args.settle)
        chatted = chat(hs, pid, args.chat_seconds, args.chat_rate) if args.chat_seconds else {}
        row = {
            "variant": variant.name,
            "jemalloc_mapped": maps_jemalloc(pid),
            "limits": variant.limits,
            "env": variant.env,
            "start_s": start_s,
            "workload_s": work_s,
            "idle": idle,
            "working": working,
            "working_settled": working_settled,
            **work,
            **chatted,
        }
        cpu = (
            f"  chat {chatted['chat_cpu_ms_per_message']:.1f} ms CPU/message"
            f" ({chatted['chat_messages']} sent, {chatted['chat_syncs']} syncs answered)"
            if chatted
            else ""
        )
        print(
            f"  {variant.name:<22} idle rss {idle['rss']:6.1f}  working rss "
            f"{working['rss']:6.1f} settled {working_settled['rss']:6.1f} MiB  "
            f"send p50 {work['send_p50_ms']:.1f} ms  ({work_s:.0f} s){cpu}",
            flush=True,
        )
        return row
    finally:
        hs.stop()
        shutil.rmtree(hs.spec.data_dir, ignore_errors=True)


# Report ------------------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    summary = []
    for name, runs in by_variant.items():
        entry: dict[str, Any] = {"variant": name, "runs": len(runs)}
        for phase in ("idle", "working", "working_settled"):
            for kind in ("rss", "pss", "private", "anon"):
                entry[f"{phase}_{kind}"] = statistics.median(r[phase][kind] for r in runs)
        entry["send_p50_ms"] = statistics.median(r["send_p50_ms"] for r in runs)
        entry["send_p99_ms"] = statistics.median(r["send_p99_ms"] for r in runs)
        entry["workload_s"] = statistics.median(r["workload_s"] for r in runs)
        if "chat_cpu_ms_per_message" in runs[0]:
            for key in ("chat_cpu_ms_per_message", "chat_cores", "idle_cores"):
                entry[key] = statistics.median(r[key] for r in runs)
        summary.append(entry)
    return summary


def print_table(summary: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nOne tenant Synapse (SQLite), MiB from /proc/<pid>/smaps_rollup, median of "
        f"{args.repeat}; workload: {args.users} users, {args.rooms} rooms, "
        f"{args.messages} messages, syncs"
    )
    head = (
        f"{'variant':<22}{'idle RSS':>9}{'PSS':>7}{'priv':>7}{'anon':>7}"
        f"{'work RSS':>10}{'PSS':>7}{'priv':>7}{'anon':>7}{'settled RSS':>12}{'priv':>7}"
        f"{'send p50':>10}{'p99 ms':>8}{'work s':>8}"
    )
    print(head)
    for e in summary:
        print(
            f"{e['variant']:<22}{e['idle_rss']:>9.1f}{e['idle_pss']:>7.1f}{e['idle_private']:>7.1f}"
            f"{e['idle_anon']:>7.1f}{e['working_rss']:>10.1f}{e['working_pss']:>7.1f}"
            f"{e['working_private']:>7.1f}{e['working_anon']:>7.1f}"
            f"{e['working_settled_rss']:>12.1f}{e['working_settled_private']:>7.1f}"
            f"{e['send_p50_ms']:>10.1f}{e['send_p99_ms']:>8.1f}{e['workload_s']:>8.1f}"
        )
    if args.chat_seconds:
        print(
            f"\nChatting: 2 users long-polling /sync, each sending {args.chat_rate:g} messages a "
            f"second for {args.chat_seconds:g} s; the homeserver's CPU, median of {args.repeat}"
        )
        print(f"{'variant':<22}{'ms CPU per message':>20}{'cores chatting':>16}{'cores idle':>12}")
        for e in summary:
            print(
                f"{e['variant']:<22}{e['chat_cpu_ms_per_message']:>20.1f}"
                f"{e['chat_cores']:>16.3f}{e['idle_cores']:>12.3f}"
            )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
        help="which configurations to measure (default: all)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="runs of the whole list")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--rooms", type=int, default=5)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds RSS must stay within 1 %%"
    )
    parser.add_argument(
        "--chat-seconds", type=float, default=0.0, help="the chatting step's length (0: none)"
    )
    parser.add_argument(
        "--chat-rate", type=float, default=1.0, help="messages a second each chatting user sends"
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    stop_on_sigterm()  # SIGTERM stops the homeserver of the current variant too
    root = Path(tempfile.mkdtemp(prefix="c3-footprint-"))
    rows: list[dict[str, Any]] = []
    try:
        for rep in range(args.repeat):
            print(f"run {rep + 1}/{args.repeat}", flush=True)
            for name in args.variants:
                rows.append(run_variant(VARIANTS[name], args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = summarize(rows)
    print_table(summary, args)
    report = {
        "started_at": datetime.now(UTC).isoformat(),
        "host": {
            "cpus": os.cpu_count(),
            "python": host_platform.python_version(),
            "machine": host_platform.machine(),
            "jemalloc": str(jemalloc_path()),
        },
        "args": vars(args),
        "summary": summary,
        "runs": rows,
    }
    path = write_results("synapse-footprint", report)
    print(f"\nresults written to {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
