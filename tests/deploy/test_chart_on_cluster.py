"""The chart installed on a real cluster: `helm install --wait`, `helm test`, and what the
ServiceAccounts may do according to the API server's own authorizer (`kubectl auth can-i`).

Skipped without ``KUBECONFIG``. To run it (a laptop cluster as in deploy/helm/README.md, with
the image loaded, PostgreSQL, Redis and the Secret in place)::

    KUBECONFIG=~/.kube/config C3_TEST_CHART_NAMESPACE=c3 \\
    C3_TEST_CHART_VALUES=my-values.yaml pytest -m cluster tests/deploy/test_chart_on_cluster.py

``C3_TEST_CHART_VALUES`` holds at least existingSecret, baseDomain, kubernetes.databaseCidr and
the image; the release is ``C3_TEST_CHART_RELEASE`` (default ``c3-chart-test``) and is
uninstalled afterwards.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers.helm import CHART, ToolsUnavailable, helm, helm_tools

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not (os.environ.get("KUBECONFIG") and os.environ.get("C3_TEST_CHART_VALUES")),
        reason="needs a real cluster: set KUBECONFIG and C3_TEST_CHART_VALUES "
        "(see deploy/helm/README.md, 'Checking the chart')",
    ),
]

NAMESPACE = os.environ.get("C3_TEST_CHART_NAMESPACE", "c3")
RELEASE = os.environ.get("C3_TEST_CHART_RELEASE", "c3-chart-test")


@pytest.fixture(scope="module")
def installed() -> Iterator[None]:
    try:
        helm_tools()
    except ToolsUnavailable as exc:
        pytest.skip(f"no helm: {exc}")
    values = os.environ["C3_TEST_CHART_VALUES"]
    done = helm(
        "upgrade", "--install", RELEASE, str(CHART), "--namespace", NAMESPACE,
        "-f", values, "--wait", "--timeout", "10m",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        yield
    finally:
        helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")


def _can(account: str, *request: str) -> bool:
    """The API server's answer to "may this ServiceAccount do that?"."""
    kubectl = helm_tools().kubectl
    who = f"system:serviceaccount:{NAMESPACE}:{account}"
    done = subprocess.run(
        [str(kubectl), "auth", "can-i", *request, "--as", who],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() in ("yes", "no"), done.stdout + done.stderr
    return done.stdout.strip() == "yes"


def test_helm_test_passes(installed: None) -> None:
    done = helm("test", RELEASE, "--namespace", NAMESPACE, "--timeout", "5m", "--logs")
    assert done.returncode == 0, done.stdout + done.stderr


def test_worker_may_apply_tenant_namespaces_and_nothing_more(installed: None) -> None:
    worker = f"{RELEASE}-worker"
    assert _can(worker, "create", "namespaces")
    assert _can(worker, "patch", "statefulsets.apps", "-n", "c3-t-anything")
    assert _can(worker, "update", "statefulsets.apps/scale", "-n", "c3-t-anything")
    assert _can(worker, "list", "events", "-n", "c3-t-anything")
    assert not _can(worker, "create", "pods", "-n", "c3-t-anything")
    assert not _can(worker, "get", "nodes")
    assert not _can(worker, "create", "clusterrolebindings.rbac.authorization.k8s.io")
    assert not _can(worker, "create", "deployments.apps", "-n", NAMESPACE)


def test_other_platform_pods_may_do_nothing(installed: None) -> None:
    for verb, resource in (("get", "secrets"), ("create", "namespaces"), ("list", "pods")):
        assert not _can(RELEASE, verb, resource, "-n", NAMESPACE)
