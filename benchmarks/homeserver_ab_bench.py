"""Homeserver configs side by side at the same moment: what a Synapse setting costs a start and
a message (issue 16: the homeservers' CPU-seconds a round of wakes and chat).

Measured one after another, two configs differ by the machine's drift as much as by
themselves (±2–5 ms on a ~30 ms message on this VM kind). Here the variants' homeservers
run at the same time and take turns, so the drift falls on both alike.

Variants (``--variants``; the first is the reference the others are compared with):

- ``shipped``: the config the local backend renders for a tenant on the plan defaults;
- ``federation-sender``: the same with Synapse's federation sender running (no
  ``federation_sender_instances``), which every homeserver that does not federate ran before
  the twenty-second session.

Each of ``--rounds`` rounds:

1. renders one homeserver per variant through the local backend (SQLite, as provisioned),
   applies the variant's changes to its ``homeserver.yaml`` and starts it from the zygote, as a
   wake does (the variants' order alternates by round); a homeserver is started once first,
   so its schema exists, and stopped; the start measured is the second, with its **CPU to
   the first** ``/health`` (``/proc/<pid>/task/*/schedstat``);
2. registers two users on each (shared-secret registration), a room they share, a first
   ``/sync`` each, and waits ``--settle`` seconds (start-up work done);
3. ``--messages`` times, each homeserver in turn (the order alternating each time): the first
   user sends a message, then both sync (``timeout=0``). **CPU per message**: each
   homeserver's CPU over the whole loop divided by the messages (all variants are alive
   throughout, so their timers count alike); **transactions per message** from Synapse's own
   ``synapse_storage_transaction_time_count`` (its metrics listener); **context switches per
   message** (voluntary and not, all its threads).

Prints the medians over the rounds per variant and each one's difference to the reference;
writes ``benchmarks/results/homeserver-ab-<UTC stamp>.json``.

Usage (from the repository root)::

    PYTHONPATH=services:. .venv/bin/python benchmarks/homeserver_ab_bench.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "services"))
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import write_results  # noqa: E402
from benchmarks.nginx import context_switches, on_cpu_seconds  # noqa: E402
from benchmarks.synapse_footprint_bench import register  # noqa: E402
from benchmarks.zygote_bench import targets, wait_healthy  # noqa: E402
from provisioner.backends.base import HomeserverTarget  # noqa: E402
from provisioner.backends.local import LocalBackend  # noqa: E402

# A variant: keys of homeserver.yaml set after the local backend rendered it (None: removed).
VARIANTS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "federation-sender": {"federation_sender_instances": None},
}
_TRANSACTIONS = re.compile(r"^synapse_storage_transaction_time_count(?:_total)?\{.*\} (\S+)$", re.M)


@dataclass
class Homeserver:
    variant: str
    target: HomeserverTarget
    client: httpx.Client
    metrics_url: str
    pid: int = 0
    start_cpu_s: float = 0.0
    tokens: list[str] = field(default_factory=list)
    since: list[str] = field(default_factory=list)
    room: str = ""

    def transactions(self) -> float:
        return sum(map(float, _TRANSACTIONS.findall(httpx.get(self.metrics_url).text)))

    def auth(self, user: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def sync(self, user: int) -> None:
        answer = self.client.get(
            "/_matrix/client/v3/sync",
            params={"timeout": 0, **({"since": self.since[user]} if self.since[user] else {})},
            headers=self.auth(user),
        )
        answer.raise_for_status()
        self.since[user] = answer.json()["next_batch"]

    def set_up_chat(self) -> None:
        secret = self.target.secrets.registration_shared_secret
        self.tokens = [register(self.client, secret, name) for name in ("alice", "bob")]
        self.since = ["", ""]
        created = self.client.post(
            "/_matrix/client/v3/createRoom",
            json={"invite": [f"@bob:{self.target.server_name}"]},
            headers=self.auth(0),
        )
        created.raise_for_status()
        self.room = created.json()["room_id"]
        self.client.post(
            f"/_matrix/client/v3/join/{self.room}", json={}, headers=self.auth(1)
        ).raise_for_status()
        self.sync(0)
        self.sync(1)

    def message(self, n: int) -> None:
        self.client.put(
            f"/_matrix/client/v3/rooms/{self.room}/send/m.room.message/ab{n}",
            json={"msgtype": "m.text", "body": f"message {n}"},
            headers=self.auth(0),
        ).raise_for_status()
        self.sync(0)
        self.sync(1)


def apply(backend: LocalBackend, target: HomeserverTarget, changes: dict[str, Any]) -> None:
    path = backend.tenant_dir(target.tenant_id) / "homeserver.yaml"
    config = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=True))


def one_round(root: Path, variants: list[str], messages: int, settle: float) -> dict[str, Any]:
    backend = LocalBackend(root)
    homeservers: list[Homeserver] = []
    try:
        for variant, target in zip(variants, targets(backend, len(variants)), strict=True):
            backend.render(target)
            apply(backend, target, VARIANTS[variant])
            url = backend.upstream_url(target)
            client = httpx.Client(base_url=url, timeout=30)
            metrics = f"http://127.0.0.1:{target.port + 1}/_synapse/metrics"
            homeservers.append(Homeserver(variant, target, client, metrics))
            backend.start(target)  # the schema made, as for a provisioned tenant
            wait_healthy(client, url, why=partial(backend.log_tail, target.tenant_id))
            backend.stop(target.tenant_id)
        for hs in homeservers:  # the start measured: a wake's
            backend.start(hs.target)
            url = backend.upstream_url(hs.target)
            wait_healthy(hs.client, url, why=partial(backend.log_tail, hs.target.tenant_id))
            pid = backend._live_pid(hs.target.tenant_id)  # noqa: SLF001
            assert pid is not None
            hs.pid, hs.start_cpu_s = pid, on_cpu_seconds(pid)
            hs.set_up_chat()
        time.sleep(settle)  # start-up work done; a benchmark, not a test
        cpu0 = [on_cpu_seconds(hs.pid) for hs in homeservers]
        switches0 = [context_switches(hs.pid) for hs in homeservers]
        txns0 = [hs.transactions() for hs in homeservers]
        for n in range(messages):
            for hs in homeservers if n % 2 == 0 else reversed(homeservers):
                hs.message(n)
        return {
            hs.variant: {
                "start_cpu_ms": 1e3 * hs.start_cpu_s,
                "cpu_ms_per_message": 1e3 * (on_cpu_seconds(hs.pid) - cpu0[i]) / messages,
                "transactions_per_message": (hs.transactions() - txns0[i]) / messages,
                "switches_per_message": (context_switches(hs.pid) - switches0[i]) / messages,
            }
            for i, hs in enumerate(homeservers)
        }
    finally:
        backend.stop_all()
        for hs in homeservers:
            hs.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                        default=["shipped", "federation-sender"])  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=400, help="messages per homeserver")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds before the messages")
    args = parser.parse_args()
    if len(set(args.variants)) < 2:
        parser.error("--variants: at least two different variants")
    load_before = os.getloadavg()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="c3-homeserver-ab-") as tmp:
        for round_ in range(args.rounds):
            order = args.variants if round_ % 2 == 0 else args.variants[::-1]
            found = one_round(Path(tmp) / str(round_), order, args.messages, args.settle)
            rounds.append(found)
            print(
                f"round {round_ + 1}: "
                + "; ".join(
                    f"{v} start {found[v]['start_cpu_ms']:.0f} ms, "
                    f"{found[v]['cpu_ms_per_message']:.2f} ms/message"
                    for v in args.variants
                ),
                flush=True,
            )
    columns = ("start_cpu_ms", "cpu_ms_per_message", "transactions_per_message",
               "switches_per_message")  # fmt: skip
    medians = {
        v: {c: statistics.median(r[v][c] for r in rounds) for c in columns} for v in args.variants
    }
    reference = args.variants[0]
    print(
        f"\nmedians of {args.rounds} rounds, {args.messages} messages each per homeserver "
        "(a message: one send, both users sync)"
    )
    print(f"{'variant':20} {'start CPU ms':>12} {'CPU ms/message':>15} {'txns/message':>13} "
          f"{'switches/message':>17}")  # fmt: skip
    for v in args.variants:
        m = medians[v]
        print(
            f"{v:20} {m['start_cpu_ms']:12.1f} {m['cpu_ms_per_message']:15.2f} "
            f"{m['transactions_per_message']:13.1f} {m['switches_per_message']:17.1f}"
        )
    for v in args.variants[1:]:
        deltas = [r[v]["cpu_ms_per_message"] - r[reference]["cpu_ms_per_message"] for r in rounds]
        print(
            f"{v} − {reference}, CPU per message, each round: "
            + ", ".join(f"{d:+.2f} ms" for d in deltas)
        )
    path = write_results(
        "homeserver-ab",
        {"args": vars(args), "load_before": load_before, "load_after": os.getloadavg(),
         "rounds": rounds, "medians": medians},
    )  # fmt: skip
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
