"""The kubernetes backend against the in-memory API server (tests/helpers/kube): server-side
apply with one field manager, idempotent applies, suspend/resume as scale, deletion that waits
for the namespace, drift repaired by applying again, a crash-looping pod's events in the
observed state, and start-up refused without cluster access."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import c3_synapse
import httpx
import pytest
from lightkube import Client
from lightkube.config.kubeconfig import KubeConfig
from lightkube.resources.core_v1 import Namespace

from platform_core.errors import PermanentError, TemporaryError
from platform_core.object_store import LocalStore
from provisioner.backends import kubernetes_manifests as manifests
from provisioner.backends.base import HomeserverTarget
from provisioner.backends.kubernetes import FIELD_MANAGER, KubernetesBackend
from provisioner.steps import make_backend
from tests.helpers.kube import KubeApiServer, kube_api_server
from tests.helpers.platform import poll
from tests.provisioner.kubernetes.helpers import kube_settings, tenant_target

APPLY = "application/apply-patch+yaml"


@pytest.fixture
def api_only(tmp_path: Path) -> Iterator[KubeApiServer]:
    """The API server with a kubelet that runs no pod of ours (its namespace prefix is not
    ours): what the backend applies, without Synapse processes."""
    with kube_api_server(tmp_path / "kube", namespace_prefix="kubelet-off-") as server:
        yield server


def backend_for(server: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                **options: Any) -> KubernetesBackend:  # fmt: skip
    """The backend as a worker makes it: the kubeconfig found through KUBECONFIG."""
    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig))
    backend = make_backend(kube_settings(data_dir=str(tmp_path / "data")))
    assert isinstance(backend, KubernetesBackend)
    for name, value in options.items():
        setattr(backend, name, value)
    return backend


def deployed(server: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             target: HomeserverTarget | None = None,
             **options: Any) -> tuple[KubernetesBackend, HomeserverTarget, str]:  # fmt: skip
    """A backend (``backend_for``) that has rendered and started ``target`` (a new tenant's by
    default); with the tenant's namespace."""
    backend = backend_for(server, tmp_path, monkeypatch, **options)
    target = target or tenant_target()
    backend.render(target)
    backend.start(target)
    return backend, target, manifests.namespace_name(target.tenant_id)


def other_client(server: KubeApiServer) -> Client:
    """Someone else (an operator with kubectl): another field manager."""
    return Client(config=KubeConfig.from_file(str(server.kubeconfig)), field_manager="kubectl")


def versions(server: KubeApiServer, namespace: str) -> dict[str, str]:
    found = {}
    for kind in ("ResourceQuota", "LimitRange", "NetworkPolicy", "Secret", "ConfigMap",
                 "Service", "StatefulSet"):  # fmt: skip
        for obj in server.objects(kind, namespace):
            found[f"{kind}/{obj['metadata']['name']}"] = obj["metadata"]["resourceVersion"]
    found["Namespace"] = server.get("Namespace", None, namespace)["metadata"]["resourceVersion"]  # type: ignore[index]
    return found


def test_apply_is_server_side_with_one_field_manager_and_force_and_idempotent(
    api_only: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_for(api_only, tmp_path, monkeypatch)
    target = tenant_target()
    namespace = manifests.namespace_name(target.tenant_id)
    assert backend.render(target) is False  # nothing ran with another config
    backend.start(target)

    writes = [r for r in api_only.requests if r.method in ("PATCH", "POST", "PUT")]
    assert len(writes) == 8  # every object once, and nothing but applies
    for request in writes:
        assert request.method == "PATCH" and request.content_type.startswith(APPLY), request
        assert request.query.get("fieldManager") == FIELD_MANAGER
        assert request.query.get("force") == "true"
    sts = api_only.get("StatefulSet", namespace, "synapse")
    assert sts is not None and sts["spec"]["replicas"] == 1
    managers = {entry["manager"] for entry in sts["metadata"]["managedFields"]}
    assert FIELD_MANAGER in managers
    assert backend.upstream_url(target) == (f"http://synapse.{namespace}.svc.cluster.local:8008")

    before = versions(api_only, namespace)
    assert backend.render(target) is False
    backend.start(target)
    assert versions(api_only, namespace) == before  # a second apply changes nothing

    # Another config (a plan change) is a change the running pod must pick up.
    changed = tenant_target(tenant_id=target.tenant_id, limits={"rc_message_burst": 7})
    assert backend.render(changed) is True


def test_suspend_scales_to_zero_and_resume_to_one(
    api_only: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, target, namespace = deployed(api_only, tmp_path, monkeypatch)
    assert backend.is_running(target.tenant_id)

    backend.stop(target.tenant_id)
    assert api_only.get("StatefulSet", namespace, "synapse")["spec"]["replicas"] == 0  # type: ignore[index]
    assert not backend.is_running(target.tenant_id)
    backend.stop(target.tenant_id)  # idempotent

    backend.start(target)
    assert api_only.get("StatefulSet", namespace, "synapse")["spec"]["replicas"] == 1  # type: ignore[index]
    assert backend.is_running(target.tenant_id)


def test_which_homeservers_run_is_asked_for_many_tenants_in_two_list_calls(
    api_only: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconcile pass asks after every suspended and deleted tenant each time: two list
    calls over all tenant namespaces answer what two reads per tenant did."""
    backend, running, _ = deployed(api_only, tmp_path, monkeypatch)
    stopped = tenant_target(server_name="stopped.c3.example")
    backend.render(stopped)
    backend.start(stopped)
    backend.stop(stopped.tenant_id)
    never = tenant_target(server_name="never.c3.example")  # no namespace at all
    ids = [running.tenant_id, stopped.tenant_id, never.tenant_id]
    one_by_one = {tenant_id for tenant_id in ids if backend.is_running(tenant_id)}
    assert one_by_one == {running.tenant_id}

    before = len(api_only.requests)
    assert backend.running_among(ids) == one_by_one
    calls = api_only.requests[before:]
    assert [(r.method, r.path) for r in calls] == [
        ("GET", "/apis/apps/v1/statefulsets"),
        ("GET", "/api/v1/pods"),
    ]
    assert backend.running_among([]) == set()
    assert len(api_only.requests) == before + 2


def test_sleep_scales_to_zero_keeping_everything_and_wake_scales_back(
    api_only: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sleeping homeserver takes no pod (no memory) but keeps its config, secrets, Service
    and volume claim, so waking it is one scale back to 1."""
    backend, target, namespace = deployed(api_only, tmp_path, monkeypatch)
    backend.sleep(target.tenant_id)
    assert api_only.get("StatefulSet", namespace, "synapse")["spec"]["replicas"] == 0  # type: ignore[index]
    assert api_only.get("Pod", namespace, "synapse-0") is None
    assert not backend.is_running(target.tenant_id)
    for kind, name in (("ConfigMap", manifests.CONFIG_MAP), ("Secret", manifests.SECRET)):
        assert api_only.get(kind, namespace, name) is not None, kind
    assert api_only.get("Service", namespace, "synapse") is not None
    backend.sleep(target.tenant_id)  # idempotent

    backend.wake(target)
    assert api_only.get("StatefulSet", namespace, "synapse")["spec"]["replicas"] == 1  # type: ignore[index]
    assert backend.is_running(target.tenant_id)
    backend.wake(target)  # idempotent
    assert backend.drift(target) == []


def test_delete_archives_then_waits_for_the_namespace_to_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kube_api_server(
        tmp_path / "kube", namespace_prefix="kubelet-off-", terminate_seconds=2.0
    ) as server:
        backend, target, namespace = deployed(server, tmp_path, monkeypatch)

        store = LocalStore(tmp_path / "store")
        started = time.monotonic()
        archived = backend.archive(target.tenant_id, store)
        waited = time.monotonic() - started
        assert server.get("Namespace", None, namespace) is None
        assert waited >= 1.5  # it waited while the namespace was terminating
        assert archived is not None
        with tarfile.open(store.path(archived)) as tar:
            names = set(tar.getnames())
            homeserver = tar.extractfile(f"{target.tenant_id}/config/homeserver.yaml")
            assert homeserver is not None and b"server_name: acme.c3.example" in homeserver.read()
        assert f"{target.tenant_id}/secrets/signing.key" in names
        assert (store.path(archived).stat().st_mode & 0o077) == 0  # private
        # Again: nothing left to do, the same archive answers.
        assert backend.archive(target.tenant_id, store) == archived
        assert backend.purge_archives(target.tenant_id, store) == 1


def test_a_namespace_that_takes_too_long_to_go_is_a_temporary_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with kube_api_server(
        tmp_path / "kube", namespace_prefix="kubelet-off-", terminate_seconds=30.0
    ) as server:
        backend = backend_for(server, tmp_path, monkeypatch, namespace_gone_timeout_s=0.5)
        target = tenant_target()
        backend.render(target)
        store = LocalStore(tmp_path / "store")
        with pytest.raises(TemporaryError, match="still terminating"):
            backend.archive(target.tenant_id, store)
        # The retry does not archive again: the namespace is terminating already.
        with pytest.raises(TemporaryError):
            backend.archive(target.tenant_id, store)
        assert len(store.list("archive/")) == 1


def test_drift_is_seen_and_repaired_by_applying_again(
    api_only: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, target, namespace = deployed(api_only, tmp_path, monkeypatch)
    assert backend.drift(target) == []
    wanted_config = api_only.get("ConfigMap", namespace, "synapse-config")["data"]  # type: ignore[index]

    api_only.drift_as_an_operator(namespace)
    assert sorted(backend.drift(target)) == [
        "ConfigMap synapse-config edited",
        "Service synapse missing",
        "StatefulSet synapse scaled to 0",
    ]

    backend.render(target)
    backend.start(target)
    assert backend.drift(target) == []
    assert api_only.get("Service", namespace, "synapse") is not None
    assert api_only.get("ConfigMap", namespace, "synapse-config")["data"] == wanted_config  # type: ignore[index]
    assert api_only.get("StatefulSet", namespace, "synapse")["spec"]["replicas"] == 1  # type: ignore[index]
    assert other_client(api_only).get(Namespace, namespace).metadata is not None


def test_a_crash_looping_pod_shows_in_the_observed_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real Synapse pod (kubelet stand-in) whose database does not answer exits at start;
    its restarts, BackOff events and last log lines are what the operation's error says, and
    its log is readable line by line."""
    with kube_api_server(tmp_path / "kube", backoff_base=0.2, backoff_max=2.0) as server:
        target = tenant_target()
        target.database["args"].update(host="127.0.0.1", port=1)  # type: ignore[index]
        backend, target, _ = deployed(server, tmp_path, monkeypatch, target)

        seen = poll(
            lambda: (s := backend.observe(target.tenant_id)).restarts >= 2 and s.warnings and s,
            timeout=120,
            what="the pod restarting with BackOff events",
        )
        assert any(w.startswith("BackOff") for w in seen.warnings), seen.warnings
        poll(
            lambda: not backend.is_running(target.tenant_id),
            timeout=60,
            what="the crash loop seen as not running",
        )
        tail = backend.log_tail(target.tenant_id)
        assert "restarts" in tail and "BackOff" in tail, tail
        # What `GET /v1/tenants/{id}/logs` shows: the pod's last lines, as Synapse wrote them.
        lines = backend.log_lines(target.tenant_id, 5)
        assert 0 < len(lines) <= 5 and all("\n" not in line for line in lines), lines
        assert backend.log_lines(tenant_target().tenant_id, 5) == []  # no such pod


def test_a_stock_image_pod_loads_the_mounted_module_and_serves_metrics_on_its_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod as the backend applies it, run by the kubelet stand-in with the container's own
    PYTHONPATH (/modules, its ConfigMap volume): Synapse imports the confinement module from
    that mounted copy, starts with it (a module that fails to load stops Synapse), and answers
    Prometheus on the Service's metrics port — where GET /metrics/homeservers points."""
    with kube_api_server(tmp_path / "kube") as server:
        # SQLite on the pod's volume
        target = dataclasses.replace(tenant_target(server_name="mod.c3.example"), database=None)
        backend, target, namespace = deployed(server, tmp_path, monkeypatch, target)
        poll(
            lambda: backend.observe(target.tenant_id).ready_replicas == 1,
            timeout=120,
            what="the pod to be ready",
        )

        modules = server.kubelet.pod_volume(namespace, "modules")
        assert modules is not None
        confinement = server.kubelet.imported_from(namespace, "c3_synapse.confinement")
        assert confinement == modules / "c3_synapse" / "confinement.py"
        shipped = Path(c3_synapse.__file__).parent / "confinement.py"
        assert confinement.read_text() == shipped.read_text()

        service = server.get("Service", namespace, "synapse")
        assert service is not None
        [port] = [p["port"] for p in service["spec"]["ports"] if p["name"] == "metrics"]
        metrics = httpx.get(f"http://{server.address_of(namespace)}:{port}/_synapse/metrics")
        assert metrics.status_code == 200
        assert "synapse_http_server_requests" in metrics.text or "python_info" in metrics.text


def test_backend_refuses_without_cluster_access_or_tenant_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    with pytest.raises(PermanentError, match="no usable kubeconfig"):
        make_backend(kube_settings())
    with pytest.raises(PermanentError, match="C3_TENANT_DATABASE_URL"):
        make_backend(kube_settings(tenant_database_url=None))


def test_the_worker_refuses_to_start_without_cluster_access(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),  # no ~/.kube/config
        "KUBECONFIG": str(tmp_path / "missing-kubeconfig"),
        "PYTHONPATH": ":".join(sys.path),
        "C3_BACKEND": "kubernetes",
        "C3_TENANT_DATABASE_URL": "postgresql://c3admin@127.0.0.1:5432/postgres",
        "C3_DATA_DIR": str(tmp_path / "data"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "c3", "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "C3_BACKEND=kubernetes needs access to a cluster" in done.stderr
    assert "no usable kubeconfig" in done.stderr
