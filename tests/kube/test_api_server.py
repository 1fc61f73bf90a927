"""The in-memory Kubernetes API server and kubelet stand-in (tests/helpers/kube), driven by
lightkube as the kubernetes backend drives it: server-side apply semantics, Status errors,
namespaces that take time to go, the scale subresource, and real Synapse pods that crash-loop,
restart, scale and resolve by their Service's cluster DNS name."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lightkube import ApiError, AsyncClient, Client
from lightkube.config.kubeconfig import KubeConfig
from lightkube.models.autoscaling_v1 import ScaleSpec
from lightkube.models.core_v1 import ServicePort, ServiceSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import ConfigMap, Event, Namespace, Pod, Service
from lightkube.types import PatchType

from tests.helpers.kube import KubeApiServer, kube_api_server
from tests.helpers.kube.tenant import tenant_objects
from tests.helpers.platform import poll

MANAGER = "c3"
UVLOOP_LOOKUP = """
import asyncio, uvloop
async def main():
    found = await asyncio.get_running_loop().getaddrinfo("web.shop.svc.cluster.local", 8008)
    print(found[0][4][0])
uvloop.run(main())
"""


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeApiServer]:
    with kube_api_server(tmp_path / "kube", terminate_seconds=1.0) as server:
        yield server


@pytest.fixture
def client(kube: KubeApiServer) -> Iterator[Client]:
    with Client(KubeConfig.from_file(kube.kubeconfig), field_manager=MANAGER) as c:
        yield c


def config_map(name: str, namespace: str, **data: str) -> ConfigMap:
    return ConfigMap(
        metadata=ObjectMeta(name=name, namespace=namespace, labels={"c3.io/tenant": "t1"}),
        data=data,
    )


def owners(obj: ConfigMap | StatefulSet) -> dict[tuple[str, str], dict]:
    return {
        (entry.manager, entry.operation): entry.fieldsV1
        for entry in obj.metadata.managedFields or []
    }


def test_apply_creates_updates_and_a_repeat_changes_nothing(
    kube: KubeApiServer, client: Client
) -> None:
    client.apply(Namespace(metadata=ObjectMeta(name="team")))
    created = client.apply(config_map("settings", "team", mode="a"))
    again = client.apply(config_map("settings", "team", mode="a"))
    assert again.metadata.resourceVersion == created.metadata.resourceVersion
    assert again.metadata.uid == created.metadata.uid

    changed = client.apply(config_map("settings", "team", mode="b", extra="x"))
    assert int(changed.metadata.resourceVersion) > int(created.metadata.resourceVersion)
    assert changed.data == {"mode": "b", "extra": "x"}
    assert owners(changed) == {
        (MANAGER, "Apply"): {
            "f:data": {"f:extra": {}, "f:mode": {}},
            "f:metadata": {"f:labels": {"f:c3.io/tenant": {}}},
        }
    }
    # A field the manager stops applying is removed (nobody else owns it).
    dropped = client.apply(config_map("settings", "team", mode="b"))
    assert dropped.data == {"mode": "b"}

    applies = [r for r in kube.requests if r.method == "PATCH"]
    assert {r.content_type for r in applies} == {"application/apply-patch+yaml"}
    assert all(r.query.get("fieldManager") == MANAGER for r in applies)
    listed = client.list(ConfigMap, namespace="team", labels={"c3.io/tenant": "t1"})
    assert [c.metadata.name for c in listed] == ["settings"]
    assert list(client.list(ConfigMap, namespace="team", labels={"c3.io/tenant": "t2"})) == []


def test_a_field_of_another_manager_conflicts_unless_forced(client: Client) -> None:
    client.apply(Namespace(metadata=ObjectMeta(name="team")))
    client.apply(config_map("settings", "team", mode="a"))

    with pytest.raises(ApiError) as refused:
        client.apply(config_map("settings", "team", mode="edited"), field_manager="someone")
    assert refused.value.status.code == 409
    assert refused.value.status.reason == "Conflict"
    assert 'conflict with "c3": .data.mode' in refused.value.status.message
    assert [c.field for c in refused.value.status.details.causes] == [".data.mode"]
    assert client.get(ConfigMap, "settings", namespace="team").data == {"mode": "a"}

    # The same value is no conflict: both managers own it.
    shared = client.apply(config_map("settings", "team", mode="a"), field_manager="someone")
    assert set(owners(shared)) == {(MANAGER, "Apply"), ("someone", "Apply")}

    taken = client.apply(
        config_map("settings", "team", mode="edited"), field_manager="someone", force=True
    )
    assert taken.data == {"mode": "edited"}
    assert "f:data" not in owners(taken)[(MANAGER, "Apply")]
    # ... and the platform takes it back the same way (what the reconciler's repair does).
    repaired = client.apply(config_map("settings", "team", mode="a"), force=True)
    assert repaired.data == {"mode": "a"}
    assert "f:data" not in owners(repaired).get(("someone", "Apply"), {})


def test_replace_with_a_stale_resource_version_conflicts(client: Client) -> None:
    client.apply(Namespace(metadata=ObjectMeta(name="team")))
    first = client.apply(config_map("settings", "team", mode="a"))
    client.apply(config_map("settings", "team", mode="b"))

    first.data = {"mode": "stale"}
    with pytest.raises(ApiError) as refused:
        client.replace(first)
    assert refused.value.status.code == 409
    assert "the object has been modified" in refused.value.status.message

    current = client.get(ConfigMap, "settings", namespace="team")
    current.data = {"mode": "c"}
    replaced = client.replace(current, field_manager="editor")
    assert replaced.data == {"mode": "c"}
    assert ("editor", "Update") in owners(replaced)


def test_errors_are_status_objects_like_the_real_server(
    kube: KubeApiServer, client: Client
) -> None:
    with pytest.raises(ApiError) as missing:
        client.get(ConfigMap, "nothing", namespace="default")
    assert (missing.value.status.code, missing.value.status.reason) == (404, "NotFound")
    assert missing.value.status.message == 'configmaps "nothing" not found'

    with pytest.raises(ApiError) as no_namespace:
        client.apply(config_map("settings", "absent"))
    assert no_namespace.value.status.message == 'namespaces "absent" not found'

    client.create(config_map("settings", "default"))
    with pytest.raises(ApiError) as exists:
        client.create(config_map("settings", "default"))
    assert (exists.value.status.code, exists.value.status.reason) == (409, "AlreadyExists")

    with pytest.raises(ApiError) as bad_name:
        client.apply(config_map("Not_A_Name", "default"))
    assert (bad_name.value.status.code, bad_name.value.status.reason) == (422, "Invalid")
    assert bad_name.value.status.details.causes[0].field == "metadata.name"

    with pytest.raises(ApiError) as bad_type:
        client.patch(
            Service,
            "web",
            {"apiVersion": "v1", "kind": "Service", "spec": {"ports": [{"port": "eighty"}]}},
            namespace="default",
            patch_type=PatchType.APPLY,
        )
    assert bad_type.value.status.code == 422
    assert "spec.ports.0.port" in bad_type.value.status.message

    unauthenticated = httpx.get(f"{kube.url}/api/v1/namespaces")
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["reason"] == "Unauthorized"


def test_watch_resumes_from_a_listed_resource_version(client: Client) -> None:
    client.apply(Namespace(metadata=ObjectMeta(name="team")))
    client.apply(config_map("settings", "team", mode="a"))
    listed = client.list(ConfigMap, namespace="team")
    assert [c.metadata.name for c in listed] == ["settings"]
    since = listed.resourceVersion
    client.apply(config_map("settings", "team", mode="b"))
    client.delete(ConfigMap, "settings", namespace="team")

    seen = []
    for kind, obj in client.watch(ConfigMap, namespace="team", resource_version=since):
        seen.append((kind, obj.metadata.name, (obj.data or {}).get("mode")))
        if kind == "DELETED":
            break
    assert seen == [("MODIFIED", "settings", "b"), ("DELETED", "settings", "b")]


def test_scale_subresource_moves_replicas_to_its_manager(client: Client) -> None:
    client.apply(Namespace(metadata=ObjectMeta(name="team")))
    # Not a tenant namespace: the kubelet stand-in leaves it alone.
    (statefulset,) = [o for o in tenant_objects("team") if isinstance(o, StatefulSet)]
    applied = client.apply(statefulset)
    assert applied.metadata.generation == 1

    client.replace(
        StatefulSet.Scale(
            metadata=ObjectMeta(name="synapse", namespace="team"), spec=ScaleSpec(replicas=0)
        ),
        "synapse",
        namespace="team",
        field_manager="operator",
    )
    scaled = client.get(StatefulSet, "synapse", namespace="team")
    assert scaled.spec.replicas == 0
    assert scaled.metadata.generation == 2
    assert client.get(StatefulSet.Scale, "synapse", namespace="team").spec.replicas == 0
    entry = next(e for e in scaled.metadata.managedFields if e.manager == "operator")
    assert (entry.operation, entry.subresource) == ("Update", "scale")

    with pytest.raises(ApiError) as conflict:
        client.apply(statefulset)
    assert ".spec.replicas" in conflict.value.status.message
    restored = client.apply(statefulset, force=True)
    assert restored.spec.replicas == 1
    assert restored.metadata.generation == 3


async def test_namespace_deletion_takes_time_and_takes_everything(kube: KubeApiServer) -> None:
    async with AsyncClient(KubeConfig.from_file(kube.kubeconfig), field_manager=MANAGER) as client:
        await client.apply(Namespace(metadata=ObjectMeta(name="leaving")))
        await client.apply(config_map("settings", "leaving", mode="a"))
        started = time.monotonic()
        await client.delete(Namespace, "leaving")

        terminating = await client.get(Namespace, "leaving")
        assert terminating.status.phase == "Terminating"
        assert terminating.metadata.deletionTimestamp is not None
        with pytest.raises(ApiError) as refused:
            await client.apply(config_map("late", "leaving", mode="a"))
        assert refused.value.status.code == 403
        assert "because it is being terminated" in refused.value.status.message

        async for kind, _ in client.watch(Namespace, fields={"metadata.name": "leaving"}):
            if kind == "DELETED":
                break
        assert time.monotonic() - started >= 1.0
        with pytest.raises(ApiError) as gone:
            await client.get(Namespace, "leaving")
        assert gone.value.status.code == 404
        assert kube.objects("ConfigMap", "leaving") == []
        # A namespace of the same name can be made again afterwards.
        await client.apply(Namespace(metadata=ObjectMeta(name="leaving")))


def test_a_subprocess_resolves_service_names_through_the_map(
    kube: KubeApiServer, client: Client
) -> None:
    client.apply(Namespace(metadata=ObjectMeta(name="shop")))
    service = client.apply(
        Service(
            metadata=ObjectMeta(name="web", namespace="shop"),
            spec=ServiceSpec(selector={"app": "web"}, ports=[ServicePort(port=8008)]),
        )
    )
    address = service.spec.clusterIP
    assert address == kube.address_of("shop") and address.startswith("127.0.")
    lookup = "import socket; print(socket.getaddrinfo('web.shop.svc.cluster.local', 8008)[0][4][0])"

    def resolved() -> str | None:
        run = subprocess.run(
            [sys.executable, "-c", lookup],
            env=kube.with_resolver({"PATH": "/usr/bin:/bin"}),
            capture_output=True,
            text=True,
        )
        return run.stdout.strip() if run.returncode == 0 else None

    assert poll(resolved, timeout=10, what="the Service name to resolve") == address
    # Under uvloop too (uvicorn's loop for the API and the proxy), which resolves via libuv.
    on_uvloop = subprocess.run(
        [sys.executable, "-c", UVLOOP_LOOKUP],
        env=kube.with_resolver({"PATH": "/usr/bin:/bin"}),
        capture_output=True,
        text=True,
    )
    assert on_uvloop.stdout.strip() == address, on_uvloop.stderr
    # Without the resolver on its path, the name means nothing (nothing test-only ships).
    plain = subprocess.run(
        [sys.executable, "-c", lookup],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert plain.returncode != 0


def ready_replicas(client: Client, namespace: str) -> int:
    status = client.get(StatefulSet, "synapse", namespace=namespace).status
    return (status.readyReplicas or 0) if status else 0


def synapse_container(client: Client, namespace: str):  # noqa: ANN201 -- a lightkube model
    try:
        pod = client.get(Pod, "synapse-0", namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:  # not made yet (or being replaced)
            return None
        raise
    statuses = (pod.status.containerStatuses or []) if pod.status else []
    return statuses[0] if statuses else None


@pytest.mark.e2e
def test_a_real_synapse_pod_serves_restarts_scales_and_goes_with_its_namespace(
    kube: KubeApiServer, client: Client
) -> None:
    namespace = "c3-t-0f3c"
    for obj in tenant_objects(namespace):
        client.apply(obj)
    poll(lambda: ready_replicas(client, namespace) == 1, timeout=60, what="Synapse to be ready")
    pod = client.get(Pod, "synapse-0", namespace=namespace)
    assert pod.status.phase == "Running" and pod.status.podIP == kube.address_of(namespace)

    # The Service's cluster DNS name reaches the real homeserver from another process.
    versions = (
        f"import httpx; print(httpx.get('http://synapse.{namespace}.svc.cluster.local:8008"
        "/_matrix/client/versions').json()['versions'][0])"
    )
    answer = subprocess.run(
        [sys.executable, "-c", versions], env=kube.with_resolver({}), capture_output=True, text=True
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith("r0.") or answer.stdout.startswith("v1.")

    first_pid = kube.kill_pod(namespace)
    poll(
        lambda: (c := synapse_container(client, namespace)) and c.restartCount == 1 and c.ready,
        timeout=60,
        what="the killed Synapse to be restarted and ready",
    )
    assert kube.pod_process(namespace).pid != first_pid
    assert client.get(StatefulSet, "synapse", namespace=namespace).status.readyReplicas == 1

    client.patch(
        StatefulSet.Scale,
        "synapse",
        {"spec": {"replicas": 0}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    poll(lambda: kube.pod_process(namespace) is None, timeout=30, what="the pod to stop")
    poll(lambda: not kube.objects("Pod", namespace), timeout=10, what="the pod object to go")
    assert ready_replicas(client, namespace) == 0
    assert [c["metadata"]["name"] for c in kube.objects("PersistentVolumeClaim", namespace)] == [
        "data-synapse-0"
    ]

    client.patch(
        StatefulSet.Scale,
        "synapse",
        {"spec": {"replicas": 1}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    poll(
        lambda: ready_replicas(client, namespace) == 1,
        timeout=60,
        what="Synapse back after scale-up",
    )
    process = kube.pod_process(namespace)

    client.delete(Namespace, namespace)
    poll(lambda: process.poll() is not None, timeout=30, what="Synapse to stop with its namespace")
    poll(
        lambda: kube.get("Namespace", None, namespace) is None,
        timeout=30,
        what="the namespace to go",
    )
    assert kube.objects("Pod", namespace) == [] and kube.objects("StatefulSet", namespace) == []


@pytest.mark.e2e
def test_a_pod_with_a_broken_config_crash_loops_with_backoff_events(
    kube: KubeApiServer, client: Client
) -> None:
    namespace = "c3-t-b40c"
    for obj in tenant_objects(namespace, homeserver_yaml="server_name: [unclosed\n"):
        client.apply(obj)

    def restarts() -> int:
        container = synapse_container(client, namespace)
        return container.restartCount if container else 0

    poll(lambda: restarts() >= 2, timeout=60, what="two restarts of the crashing Synapse")
    back_offs = [
        e
        for e in client.list(
            Event, namespace=namespace, fields={"involvedObject.name": "synapse-0"}
        )
        if e.reason == "BackOff"
    ]
    assert len(back_offs) == 1 and back_offs[0].type == "Warning"
    assert back_offs[0].count >= 2
    assert "Back-off restarting failed container synapse" in back_offs[0].message
    container = synapse_container(client, namespace)
    assert not container.ready
    assert container.lastState.terminated.exitCode != 0
    assert ready_replicas(client, namespace) == 0

    def logged_error() -> str | None:
        tail = "".join(client.log("synapse-0", namespace=namespace, tail_lines=10))
        return tail if "yaml" in tail and "Error" in tail else None

    poll(logged_error, timeout=30, what="the crash's traceback in the pod log")

    # A deleted pod is replaced by a new one (the StatefulSet's job), its count starting over.
    first_uid = client.get(Pod, "synapse-0", namespace=namespace).metadata.uid
    client.delete(Pod, "synapse-0", namespace=namespace)

    def replaced() -> bool:
        pod = kube.get("Pod", namespace, "synapse-0")
        return pod is not None and pod["metadata"]["uid"] != first_uid

    poll(replaced, timeout=30, what="a new synapse-0 pod")
    assert restarts() < 2
