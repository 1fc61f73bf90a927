"""Provisioning benchmark: seconds from ``POST /v1/tenants`` to status ``active`` with a real
Synapse, for tenants on SQLite (the local default) and on their own PostgreSQL database.

For each mode, one run:

1. starts the platform (``tests.platform.start_platform``) in a temporary data directory, with
   ``C3_BASE_DOMAIN=c3.bench``, a random operator token and the caller's other ``C3_*`` settings
   passed through (nothing set: SQLite platform database, embedded Redis); the ``postgres`` mode
   adds ``C3_TENANT_DATABASE_URL`` (``--tenant-database-url``), the ``sqlite`` mode removes it;
2. provisions ``--tenants`` tenants one after another: ``POST /v1/tenants``, then
   ``GET /v1/tenants/{id}`` every 50 ms until ``active``; then reads the operation's history for
   the time each step took, and deletes the tenant with ``?purge=true``, waiting until that is
   done, so every sample starts from the same state (no other tenant homeserver running);
3. prints min / median / max per mode and the median time of each step, and writes everything
   to ``benchmarks/results/provisioning-<UTC timestamp>.json``;
4. stops the platform, also on failure or Ctrl-C, and (postgres) drops any tenant database a
   failed run left behind.

Usage (from the repository root)::

    .venv/bin/python benchmarks/provisioning_bench.py [--tenants 5] [--modes sqlite postgres]
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

from benchmarks.harness import running_platform, stop_on_sigterm, write_results  # noqa: E402
from provisioner import tenant_databases  # noqa: E402

BASE_DOMAIN = "c3.bench"
POLL_INTERVAL_S = 0.05
PROVISION_TIMEOUT_S = 180.0
DELETE_TIMEOUT_S = 120.0
DEFAULT_TENANT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


# Platform ------------------------------------------------------------------------------


def platform_overrides(mode: str, tenant_database_url: str) -> dict[str, str]:
    overrides = {k: v for k, v in os.environ.items() if k.startswith("C3_")}
    overrides["C3_BASE_DOMAIN"] = BASE_DOMAIN
    overrides.pop("C3_TENANT_DATABASE_URL", None)
    if mode == "postgres":
        overrides["C3_TENANT_DATABASE_URL"] = tenant_database_url
    return overrides


# One sample ----------------------------------------------------------------------------


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        found = check()
        if found:
            return found
        time.sleep(POLL_INTERVAL_S)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def provision(
    api: httpx.Client, slug: str, created: list[str]
) -> tuple[dict[str, Any], str, float]:
    """POST a tenant (its id goes to ``created`` at once) and poll until active; returns it,
    its operation URL and the seconds."""
    started = time.perf_counter()
    response = api.post("/v1/tenants", json={"slug": slug, "display_name": "Benchmark"})
    if response.status_code != 202:
        raise RuntimeError(f"POST /v1/tenants: {response.status_code} {response.text}")
    accepted = response.json()
    created.append(accepted["id"])

    def active() -> dict[str, Any] | None:
        tenant: dict[str, Any] = api.get(f"/v1/tenants/{accepted['id']}").json()
        if tenant["status"] not in ("pending", "provisioning", "active"):
            raise RuntimeError(f"tenant provisioning ended as {tenant['status']}: {tenant}")
        return tenant if tenant["status"] == "active" else None

    tenant = wait_for(active, PROVISION_TIMEOUT_S, f"tenant {slug} to become active")
    return tenant, accepted["operation"]["url"], time.perf_counter() - started


def step_seconds(operation: dict[str, Any], created_at: str) -> dict[str, float]:
    """Seconds per step of the successful attempt, from the operation's history: ``queued``
    (tenant created → attempt started) and each step since the one before."""
    history = operation.get("history") or []
    starts = [e for e in history if e["event"] == "attempt"]
    if not starts:
        return {}
    last = starts[-1]
    previous = datetime.fromisoformat(last["at"])
    found = {"queued": (previous - datetime.fromisoformat(created_at)).total_seconds()}
    for entry in history[history.index(last) + 1 :]:
        if entry["event"] != "step":
            continue
        at = datetime.fromisoformat(entry["at"])
        found[entry["step"]] = (at - previous).total_seconds()
        previous = at
    return found


def delete(api: httpx.Client, tenant_id: str) -> None:
    response = api.delete(f"/v1/tenants/{tenant_id}", params={"purge": "true"})
    if response.status_code != 202:
        raise RuntimeError(f"DELETE /v1/tenants/{tenant_id}: {response.status_code}")
    url = response.json()["operation"]["url"]

    def finished() -> bool:
        state = api.get(url).json()["state"]
        if state == "failed":
            raise RuntimeError(f"deleting tenant {tenant_id} failed")
        return bool(state == "succeeded")

    wait_for(finished, DELETE_TIMEOUT_S, f"tenant {tenant_id} to be deleted")


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"c3-provisioning-{mode}-"))
    overrides = platform_overrides(mode, args.tenant_database_url)
    return measure(mode, overrides, data_dir, args, drop_databases=mode == "postgres")


def measure(
    label: str,
    overrides: dict[str, str],
    data_dir: Path,
    args: argparse.Namespace,
    *,
    drop_databases: bool,
) -> dict[str, Any]:
    """Provision (and delete) ``args.tenants`` tenants one after another on a platform started
    with ``overrides``; the summary of their times to active and per step."""
    samples: list[dict[str, Any]] = []
    created: list[str] = []
    try:
        with (
            running_platform(overrides, data_dir, keep_data=args.keep_data) as running,
            running.api() as api,
        ):
            for n in range(args.tenants):
                tenant, operation_url, seconds = provision(api, f"bench-{label}-{n}", created)
                steps = step_seconds(api.get(operation_url).json(), tenant["created_at"])
                samples.append({"tenant_id": tenant["id"], "seconds": seconds, "steps": steps})
                print(f"  {label} #{n + 1}: {seconds:6.2f} s  {fmt_steps(steps)}", flush=True)
                delete(api, tenant["id"])
    finally:
        if drop_databases:
            for tenant_id in created:  # a deletion that did not finish leaves its database
                name = tenant_databases.database_name_for(uuid.UUID(tenant_id))
                tenant_databases.drop_database(args.tenant_database_url, name)
    return summarize(label, samples)


# Report --------------------------------------------------------------------------------


def fmt_steps(steps: dict[str, float]) -> str:
    return "  ".join(f"{name} {seconds:.2f}" for name, seconds in steps.items())


def summarize(mode: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [s["seconds"] for s in samples]
    names = list(dict.fromkeys(name for s in samples for name in s["steps"]))
    steps = {
        name: statistics.median(s["steps"][name] for s in samples if name in s["steps"])
        for name in names
    }
    return {
        "mode": mode,
        "samples": samples,
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "median_step_s": steps,
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"\nPOST /v1/tenants → active, real Synapse, {report['tenants']} tenants per mode")
    print(f"{'tenant database':<16}{'median s':>10}{'min s':>8}{'max s':>8}")
    for row in report["modes"]:
        print(f"{row['mode']:<16}{row['median_s']:>10.2f}{row['min_s']:>8.2f}{row['max_s']:>8.2f}")
    print("\nmedian seconds per step (operation history)")
    for row in report["modes"]:
        print(f"  {row['mode']:<10}{fmt_steps(row['median_step_s'])}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=5, help="samples per mode")
    parser.add_argument(
        "--modes", nargs="+", choices=("sqlite", "postgres"), default=["sqlite", "postgres"]
    )
    parser.add_argument(
        "--tenant-database-url",
        default=os.environ.get("C3_TEST_DATABASE_URL", DEFAULT_TENANT_DATABASE_URL),
        help="admin URL for the postgres mode (a role with CREATEROLE and CREATEDB)",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the data directories")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    stop_on_sigterm()
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "tenants": args.tenants,
        "host": {
            "cpus": os.cpu_count(),
            "python": host_platform.python_version(),
            "load_1m_before": os.getloadavg()[0],
        },
        "modes": [],
    }
    for mode in args.modes:
        print(f"{mode}: starting the platform", flush=True)
        report["modes"].append(run_mode(mode, args))
    print_report(report)
    path = write_results("provisioning", report)
    print(f"\nresults written to {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
