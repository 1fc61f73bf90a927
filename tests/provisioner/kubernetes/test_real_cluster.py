"""Against a real cluster (skipped unless KUBECONFIG names one; see docs/operations.md,
"Kubernetes backend"): the API server itself admits every object the backend applies
(server-side dry run, with the namespace's restricted Pod Security enforced), and — when
C3_TEST_CLUSTER_DATABASE_URL names a PostgreSQL the cluster's pods can reach — a tenant's
Synapse becomes ready, scales to 0 and back, and its namespace is deleted."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube.resources.core_v1 import Namespace

from platform_core.object_store import LocalStore
from provisioner import tenant_databases
from provisioner.backends import kubernetes_manifests as manifests
from provisioner.backends.kubernetes import FIELD_MANAGER, KubernetesBackend
from provisioner.synapse_config import HomeserverSecrets
from tests.helpers.platform import poll
from tests.provisioner.kubernetes.helpers import kube_settings, tenant_target

DATABASE_URL = os.environ.get("C3_TEST_CLUSTER_DATABASE_URL", "")
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG"), reason="needs KUBECONFIG naming a real cluster"
    ),
]


@pytest.fixture
def backend(tmp_path: Path) -> KubernetesBackend:
    return KubernetesBackend(
        kube_settings(
            data_dir=str(tmp_path),
            tenant_database_url=DATABASE_URL or "postgresql://unused@127.0.0.1/postgres",
            kubernetes_database_cidr=os.environ.get("C3_KUBERNETES_DATABASE_CIDR", "10.0.0.5/32"),
            kubernetes_platform_namespace=os.environ.get(
                "C3_TEST_CLUSTER_PLATFORM_NAMESPACE", "c3"
            ),
        )
    )


@pytest.fixture
def namespace_cleanup(backend: KubernetesBackend) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        try:
            backend.client.delete(Namespace, name)
        except Exception:  # noqa: BLE001 — gone already
            pass


def test_the_api_server_admits_every_object(
    backend: KubernetesBackend, namespace_cleanup: list[str]
) -> None:
    built = manifests.build(backend.settings, tenant_target())
    namespace_cleanup.append(built.namespace.metadata.name)  # type: ignore[union-attr, arg-type]
    backend.apply(built.namespace)
    for obj in built.in_order()[1:]:
        # A refusal (admission, Pod Security "restricted", an unknown field) raises ApiError.
        admitted = backend.client.apply(obj, field_manager=FIELD_MANAGER, force=True, dry_run=True)
        assert admitted.metadata.name == obj.metadata.name  # type: ignore[union-attr]


@pytest.mark.skipif(not DATABASE_URL, reason="needs C3_TEST_CLUSTER_DATABASE_URL")
def test_a_tenant_runs_suspends_resumes_and_goes(
    backend: KubernetesBackend, namespace_cleanup: list[str], tmp_path: Path
) -> None:
    tenant_id = str(uuid.uuid4())
    secrets = HomeserverSecrets.generate()
    name = tenant_databases.database_name_for(uuid.UUID(tenant_id))
    tenant_databases.ensure_database(DATABASE_URL, name, secrets.database_password)
    try:
        target = tenant_target(tenant_id=tenant_id)
        target = type(target)(**{
            **target.__dict__,
            "secrets": secrets,
            "database": tenant_databases.synapse_database(backend.settings, name, secrets),
        })  # fmt: skip
        namespace_cleanup.append(manifests.namespace_name(tenant_id))
        backend.render(target)
        backend.start(target)
        poll(lambda: backend.observe(tenant_id).ready_replicas == 1, timeout=600,
             what="the homeserver pod to become ready")  # fmt: skip
        backend.stop(tenant_id)
        assert not backend.is_running(tenant_id)
        backend.start(target)
        poll(lambda: backend.observe(tenant_id).ready_replicas == 1, timeout=600,
             what="the homeserver pod to be ready again")  # fmt: skip
        started = time.monotonic()
        backend.archive(tenant_id, LocalStore(tmp_path / "store"))
        assert backend._get(Namespace, manifests.namespace_name(tenant_id)) is None
        print(f"namespace gone after {time.monotonic() - started:.1f}s")
    finally:
        tenant_databases.drop_database(DATABASE_URL, name)
