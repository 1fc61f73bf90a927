"""Provisioning-rate benchmark: tenants provisioned per minute with the fake backend and the
platform's worker (``c3 up`` runs ``c3 worker``: one Celery worker with 2 processes).

One run:

1. starts the platform (``tests.platform.start_platform``) in a temporary data directory with
   ``C3_BACKEND=fake`` (a stand-in homeserver process per tenant, ``--boot-s`` seconds of
   simulated boot), on a fresh PostgreSQL database made through ``--database-url`` (dropped at
   the end) or, without it, on SQLite; Redis is embedded unless ``C3_REDIS_URL`` is set (any
   other ``C3_*`` setting of the caller is passed through as well);
2. provisions ``--warmup`` tenants first (not measured: worker processes warm up);
3. POSTs ``--tenants`` tenants back to back and waits until all are active (polling every
   50 ms), then reads each one's provision operation;
4. checks that every tenant has exactly one stand-in homeserver admin registration (exit 1
   otherwise), prints tenants per minute from the first POST to the last operation's end, the
   per-tenant time from POST to active (p50, p95, max) and the POST latency, and writes JSON
   to ``benchmarks/results/provisioning-rate-<UTC timestamp>.json``.

Usage (from the repository root)::

    .venv/bin/python benchmarks/provisioning_rate_bench.py \\
        --database-url postgresql://postgres@127.0.0.1:5432/postgres [--tenants 60]
"""

from __future__ import annotations

import argparse
import os
import platform as host_platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import (  # noqa: E402
    fresh_database,
    running_platform,
    stop_on_sigterm,
    write_results,
)
from tests.helpers.platform import RunningPlatform, poll  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=60, help="tenants measured")
    parser.add_argument("--warmup", type=int, default=2, help="tenants before measuring")
    parser.add_argument(
        "--boot-s", type=float, default=0.0, help="simulated homeserver boot time (s)"
    )
    parser.add_argument(
        "--database-url",
        help="PostgreSQL admin URL: the platform gets a fresh database there (else SQLite)",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the data directory")
    return parser.parse_args()


def create(api: httpx.Client, slug: str) -> tuple[dict[str, Any], float]:
    """POST one tenant; returns it and the POST's latency in seconds."""
    started = time.perf_counter()
    response = api.post("/v1/tenants", json={"slug": slug, "display_name": slug})
    latency = time.perf_counter() - started
    if response.status_code != 202:
        raise RuntimeError(f"POST /v1/tenants answered {response.status_code}: {response.text}")
    return response.json(), latency


def wait_active(api: httpx.Client, ids: set[str], timeout: float) -> None:
    def all_active() -> bool:
        items = api.get("/v1/tenants", params={"limit": 200}).json()["items"]
        now = {t["id"]: t["status"] for t in items}
        failed = [i for i in ids if now.get(i) == "failed"]
        if failed:
            raise RuntimeError(f"{len(failed)} tenants failed to provision")
        return all(now.get(i) == "active" for i in ids)

    poll(all_active, timeout=timeout, what=f"{len(ids)} tenants to be active", interval=0.05)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure(running: RunningPlatform, args: argparse.Namespace) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    with running.api() as api:
        warm = [create(api, f"warm-{run}-{n}")[0]["id"] for n in range(args.warmup)]
        wait_active(api, set(warm), timeout=120)

        first_post = datetime.now(UTC)
        tenants, post_latencies = [], []
        for n in range(args.tenants):
            tenant, latency = create(api, f"bench-{run}-{n:03d}")
            tenants.append(tenant)
            post_latencies.append(latency)
        posted = datetime.now(UTC)
        wait_active(api, {t["id"] for t in tenants}, timeout=60 + 10 * args.tenants)

        operations = [api.get(t["operation"]["url"]).json() for t in tenants]
    finished = [datetime.fromisoformat(op["finished_at"]) for op in operations]
    created = [datetime.fromisoformat(t["created_at"]) for t in tenants]
    to_active = [(f - c).total_seconds() for f, c in zip(finished, created, strict=True)]
    wall_s = (max(finished) - first_post).total_seconds()
    steps = step_durations(operations)
    starts = [_first(op, "attempt") for op in operations]
    queued = [(a - c).total_seconds() for a, c in zip(starts, created, strict=True)]
    attempt = [(f - a).total_seconds() for f, a in zip(finished, starts, strict=True)]
    registrations = [
        len((running.homeserver_dir(t["id"]) / "registrations.jsonl").read_text().splitlines())
        for t in tenants
    ]
    return {
        "tenants": args.tenants,
        "wall_s": round(wall_s, 3),
        "tenants_per_min": round(args.tenants / wall_s * 60, 1),
        "post_phase_s": round((posted - first_post).total_seconds(), 3),
        "post_ms_p50": round(statistics.median(post_latencies) * 1000, 1),
        "post_ms_max": round(max(post_latencies) * 1000, 1),
        "to_active_s_p50": round(percentile(to_active, 0.5), 3),
        "to_active_s_p95": round(percentile(to_active, 0.95), 3),
        "to_active_s_max": round(max(to_active), 3),
        "queued_s_p50": round(percentile(queued, 0.5), 3),
        "attempt_s_p50": round(percentile(attempt, 0.5), 3),
        "step_s_p50": {name: round(statistics.median(v), 4) for name, v in steps.items()},
        "attempts_total": sum(op["attempts"] for op in operations),
        "admin_registrations_ok": all(count == 1 for count in registrations),
    }


def _first(op: dict[str, Any], event: str) -> datetime:
    return next(datetime.fromisoformat(e["at"]) for e in op["history"] if e["event"] == event)


def step_durations(operations: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Seconds each step took (from the previous transition in the operation's history)."""
    durations: dict[str, list[float]] = {}
    for op in operations:
        previous = None
        for event in op["history"]:
            at = datetime.fromisoformat(event["at"])
            if previous is not None and event["event"] in ("step", "succeeded"):
                name = event.get("step") or "finish"
                durations.setdefault(name, []).append((at - previous).total_seconds())
            previous = at
    return durations


def render(report: dict[str, Any]) -> str:
    m, s = report["measured"], report["settings"]
    return "\n".join(
        [
            f"provisioning rate, fake backend (boot {s['boot_s']} s), worker of 2 processes,"
            f" {s['database']} database, {s['redis']} Redis",
            f"  tenants                 {m['tenants']} (after {s['warmup']} warm-up)",
            f"  first POST → last active {m['wall_s']:.2f} s",
            f"  tenants per minute      {m['tenants_per_min']:.1f}",
            f"  POST /v1/tenants        p50 {m['post_ms_p50']:.1f} ms, max {m['post_ms_max']:.1f}"
            f" ms (all {m['tenants']} posted in {m['post_phase_s']:.2f} s)",
            f"  POST → active per tenant p50 {m['to_active_s_p50']:.2f} s,"
            f" p95 {m['to_active_s_p95']:.2f} s, max {m['to_active_s_max']:.2f} s",
            f"  queued p50 {m['queued_s_p50']:.2f} s, attempt p50 {m['attempt_s_p50']:.3f} s; "
            "steps p50: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in m["step_s_p50"].items()),
            f"  attempts                {m['attempts_total']} for {m['tenants']} operations",
            f"  one admin registration each: {'yes' if m['admin_registrations_ok'] else 'NO'}",
        ]
    )


def main() -> int:
    args = parse_args()
    stop_on_sigterm()
    load_before = os.getloadavg()[0]
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    data_dir = Path(tempfile.mkdtemp(prefix="c3-provisioning-bench-"))
    overrides = {k: v for k, v in os.environ.items() if k.startswith("C3_")}
    overrides |= {
        "C3_BASE_DOMAIN": "c3.bench",
        "C3_BACKEND": "fake",
        "C3_FAKE_HOMESERVER_BOOT_S": str(args.boot_s),
    }
    with fresh_database(args.database_url) as database_url:
        if database_url is not None:
            overrides["C3_DATABASE_URL"] = database_url
        with running_platform(overrides, data_dir, keep_data=args.keep_data) as running:
            measured = measure(running, args)

    report = {
        "started_at": started_at,
        "settings": {
            "tenants": args.tenants,
            "warmup": args.warmup,
            "boot_s": args.boot_s,
            "worker_processes": 2,
            "database": "postgresql"
            if args.database_url or "C3_DATABASE_URL" in os.environ
            else "sqlite",
            "redis": "external" if "C3_REDIS_URL" in os.environ else "embedded",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": host_platform.platform(),
            "loadavg_1m_before": load_before,
        },
        "measured": measured,
    }
    print("\n" + render(report))
    path = write_results("provisioning-rate", report)
    print(f"\nresults written to {path.relative_to(REPO_ROOT)}")
    return 0 if measured["admin_registrations_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
