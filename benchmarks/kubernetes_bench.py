"""Kubernetes backend benchmark, against the in-memory API server of the tests
(``tests/helpers/kube``):

1. **apply**: one tenant's full set of objects (Namespace, ResourceQuota, LimitRange,
   NetworkPolicy, Secret, ConfigMap, Service, StatefulSet) built by
   ``provisioner.backends.kubernetes_manifests`` and server-side applied by the backend, for
   ``--apply-tenants`` new tenants (create), then all of them again unchanged (what every
   reconcile pass does); the kubelet stand-in runs no pod here. Prints sets per second and
   milliseconds per set for each, and the time spent building alone.
2. **provision**: ``c3 up`` with ``C3_BACKEND=kubernetes`` against the API server, whose kubelet
   stand-in runs each tenant's StatefulSet as a real Synapse process on its own PostgreSQL
   database; ``POST /v1/tenants`` → ``active`` for ``--tenants`` tenants one after another
   (each deleted with ``?purge=true`` before the next), with the median time of each step.

Results go to ``benchmarks/results/kubernetes-<UTC timestamp>.json``.

Usage (from the repository root, PostgreSQL on loopback)::

    PYTHONPATH=services:. .venv/bin/python benchmarks/kubernetes_bench.py [--tenants 3]
        [--apply-tenants 200] [--parts apply provision]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import stop_on_sigterm, write_results  # noqa: E402
from benchmarks.provisioning_bench import (  # noqa: E402
    BASE_DOMAIN,
    DEFAULT_TENANT_DATABASE_URL,
    fmt_steps,
    measure,
)
from platform_core.settings import Settings  # noqa: E402
from provisioner.backends import kubernetes_manifests as manifests  # noqa: E402
from provisioner.backends.base import HomeserverTarget  # noqa: E402
from provisioner.backends.kubernetes import KubernetesBackend  # noqa: E402
from provisioner.synapse_config import HomeserverSecrets  # noqa: E402
from tests.helpers.kube import kube_api_server  # noqa: E402


def bench_target(secrets: HomeserverSecrets) -> HomeserverTarget:
    tenant_id = str(uuid.uuid4())
    name = "t_" + tenant_id.replace("-", "")[:20]
    return HomeserverTarget(
        tenant_id=tenant_id,
        server_name=f"{name}.{BASE_DOMAIN}",
        public_baseurl=f"https://{name}.{BASE_DOMAIN}/",
        port=None,
        limits={},
        secrets=secrets,
        database={
            "name": "psycopg2",
            "args": {
                "host": "10.0.0.5",
                "user": name,
                "dbname": name,
                "password": secrets.database_password,
            },
        },  # fmt: skip
        plan_code="default",
    )


def run_apply(count: int) -> dict[str, Any]:
    settings = Settings(
        backend="kubernetes",
        tenant_database_url="postgresql://c3@10.0.0.5/postgres",
        kubernetes_database_cidr="10.0.0.5/32",
        data_dir=tempfile.mkdtemp(prefix="c3-kube-bench-"),
    )
    secrets = HomeserverSecrets.generate()  # generating a key per tenant is not what we time
    targets = [bench_target(secrets) for _ in range(count)]
    with tempfile.TemporaryDirectory(prefix="c3-kube-api-") as root:
        # The kubelet watches another prefix: no Synapse runs, only the API server works.
        with kube_api_server(Path(root), namespace_prefix="bench-off-") as server:
            os.environ["KUBECONFIG"] = str(server.kubeconfig)
            backend = KubernetesBackend(settings)

            def apply_all() -> float:
                started = time.perf_counter()
                for target in targets:
                    for obj in backend.objects_for(target).in_order():
                        backend.apply(obj)
                return time.perf_counter() - started

            started = time.perf_counter()
            for target in targets:
                manifests.build(settings, target)
            build_s = time.perf_counter() - started
            create_s = apply_all()
            unchanged_s = apply_all()
    per_set = len(manifests.build(settings, targets[0]).in_order())
    result = {
        "tenants": count,
        "objects_per_set": per_set,
        "build_only_sets_per_s": count / build_s,
        "create_sets_per_s": count / create_s,
        "create_ms_per_set": 1000 * create_s / count,
        "reapply_sets_per_s": count / unchanged_s,
        "reapply_ms_per_set": 1000 * unchanged_s / count,
    }
    print(
        f"apply: {count} tenants × {per_set} objects — build only {result['build_only_sets_per_s']:.0f}"
        f" sets/s; build+apply (create) {result['create_sets_per_s']:.1f} sets/s"
        f" ({result['create_ms_per_set']:.1f} ms/set); unchanged re-apply"
        f" {result['reapply_sets_per_s']:.1f} sets/s ({result['reapply_ms_per_set']:.1f} ms/set)",
        flush=True,
    )
    return result


def run_provision(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="c3-kube-provisioning-"))
    with tempfile.TemporaryDirectory(prefix="c3-kube-cluster-") as root:
        with kube_api_server(Path(root), terminate_seconds=1.0) as cluster:
            overrides = {k: v for k, v in os.environ.items() if k.startswith("C3_")}
            overrides.update(
                cluster.with_resolver({"PYTHONPATH": os.environ.get("PYTHONPATH", "")}),
                C3_BASE_DOMAIN=BASE_DOMAIN,
                C3_BACKEND="kubernetes",
                C3_TENANT_DATABASE_URL=args.tenant_database_url,
            )
            summary = measure("kubernetes", overrides, data_dir, args, drop_databases=True)
    print(
        f"provision: POST /v1/tenants → active on the kubernetes backend (kubelet stand-in,"
        f" real Synapse, tenant PostgreSQL): median {summary['median_s']:.2f} s"
        f" (min {summary['min_s']:.2f}, max {summary['max_s']:.2f}) over {args.tenants}"
    )
    print(f"  median per step: {fmt_steps(summary['median_step_s'])}")
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=("apply", "provision"),
                        default=["apply", "provision"])  # fmt: skip
    parser.add_argument("--apply-tenants", type=int, default=50)
    parser.add_argument("--tenants", type=int, default=3, help="provisioning samples")
    parser.add_argument(
        "--tenant-database-url",
        default=os.environ.get("C3_TEST_DATABASE_URL", DEFAULT_TENANT_DATABASE_URL),
    )
    parser.add_argument("--keep-data", action="store_true")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    stop_on_sigterm()
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "cpus": os.cpu_count(),
        "load_1m_before": os.getloadavg()[0],
    }
    if "apply" in args.parts:
        report["apply"] = run_apply(args.apply_tenants)
    if "provision" in args.parts:
        report["provision"] = run_provision(args)
    path = write_results("kubernetes", report)
    print(f"results written to {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
