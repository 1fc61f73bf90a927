"""A kubernetes tenant's media in its export and its deletion archive: copied from the real
Synapse pod (kubelet stand-in) through Synapse's admin and authenticated media APIs, into
Synapse's media_store layout — also when the tenant is suspended (scaled up for the copy, then
down again)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from platform_core.errors import TemporaryError
from platform_core.object_store import LocalStore
from platform_core.synapse_admin import SynapseAdminClient
from provisioner import exports, media_copy
from provisioner.backends import kubernetes_manifests as manifests
from provisioner.backends.kubernetes import KubernetesBackend
from provisioner.media_copy import MediaAccess, copy_local_media, local_content_path
from tests.helpers.kube import KubeApiServer, kube_api_server
from tests.helpers.platform import poll
from tests.provisioner.kubernetes.helpers import SECRETS, tenant_target
from tests.provisioner.kubernetes.test_backend import backend_for

SERVER_NAME = "media.c3.example"
PHOTO = bytes(range(256)) * 4096 + b"the end"  # 1 MiB and a bit: several chunks


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KubeApiServer]:
    with kube_api_server(tmp_path / "kube", terminate_seconds=1.0) as server:
        yield server


async def _register(base_url: str, username: str, password: str, *, admin: bool) -> str:
    async with SynapseAdminClient(base_url) as client:
        answer = await client.register_with_shared_secret(
            shared_secret=SECRETS.registration_shared_secret,
            username=username,
            password=password,
            admin=admin,
        )
    return str(answer["access_token"])


def upload(base_url: str, token: str, body: bytes, filename: str) -> str:
    """Upload as a user, as a client does; returns the media id."""
    answer = httpx.post(
        f"{base_url}/_matrix/media/v3/upload",
        params={"filename": filename},
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    server, media_id = answer.json()["content_uri"].removeprefix("mxc://").split("/")
    assert server == SERVER_NAME
    return str(media_id)


def test_export_and_deletion_archive_hold_the_media_uploaded_on_the_pod(
    cluster: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = dataclasses.replace(
        tenant_target(server_name=SERVER_NAME), database=None
    )  # SQLite on the pod's volume: the media and its records survive a scale to 0
    namespace = manifests.namespace_name(target.tenant_id)
    base_url = f"http://{cluster.address_of(namespace)}:{manifests.PORT}"
    accesses: list[MediaAccess] = []
    backend = backend_for(
        cluster, tmp_path, monkeypatch, media_access=lambda tenant_id: accesses[0]
    )
    backend.render(target)
    backend.start(target)
    poll(
        lambda: backend.observe(target.tenant_id).ready_replicas == 1,
        timeout=120,
        what="the pod to be ready",
    )
    admin = asyncio.run(_register(base_url, "c3-admin", "admin-pw-123456", admin=True))
    alice = asyncio.run(_register(base_url, "alice", "alice-pw-123456", admin=False))
    photo = upload(base_url, alice, PHOTO, "photo.bin")
    note = upload(base_url, alice, b"a small note", "note.txt")
    # An upload announced but never sent (asynchronous upload): it has no bytes to export.
    created = httpx.post(
        f"{base_url}/_matrix/media/v1/create", headers={"Authorization": f"Bearer {alice}"}
    )
    assert created.status_code == 200, created.text
    accesses.append(MediaAccess(base_url=base_url, access_token=admin, server_name=SERVER_NAME))
    monkeypatch.setattr(media_copy, "_PAGE", 1)  # every list read page by page

    # Export: the files in Synapse's layout, named in the archive as a local tenant's are.
    into = backend.export_files(target.tenant_id, tmp_path / "export")
    assert into is not None
    assert local_content_path(into / "media_store", photo).read_bytes() == PHOTO
    assert local_content_path(into / "media_store", note).read_bytes() == b"a small note"
    names = {name for _, name in exports._media_files(into / "media_store")}
    assert names == {
        f"media_store/local_content/{photo[:2]}/{photo[2:4]}/{photo[4:]}",
        f"media_store/local_content/{note[:2]}/{note[2:4]}/{note[4:]}",
    }
    assert (into / "signing.key").read_bytes()

    # Suspended (scaled to 0): the deletion archive still gets the media; scaled down after.
    backend.stop(target.tenant_id)
    store = LocalStore(tmp_path / "store")
    key = backend.archive_running(target.tenant_id, store)
    assert key is not None
    assert cluster.get("StatefulSet", namespace, "synapse")["spec"]["replicas"] == 0  # type: ignore[index]
    assert cluster.pod_process(namespace) is None
    with store.open(key) as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
        member = (
            f"{target.tenant_id}/media_store/local_content/{photo[:2]}/{photo[2:4]}/{photo[4:]}"
        )
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == PHOTO
        names = set(tar.getnames())
    assert f"{target.tenant_id}/secrets/signing.key" in names
    assert f"{target.tenant_id}/MEDIA_NOT_COPIED" not in names

    # The deletion then finds that archive and only deletes the namespace.
    assert backend.archive(target.tenant_id, store) == key
    assert cluster.get("Namespace", None, namespace) is None
    assert [item.key for item in store.list("archive/")] == [key]


def test_an_unreachable_homeserver_is_a_temporary_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        access = MediaAccess(f"http://127.0.0.1:{port}", "token", SERVER_NAME)
        with pytest.raises(TemporaryError, match="unreachable"):
            copy_local_media(access, tmp_path / "media_store", timeout_s=5)


def test_a_tenant_without_a_platform_admin_is_archived_without_media_saying_why(
    cluster: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deletion never waits on media it cannot read: the archive names what is missing."""
    backend: KubernetesBackend = backend_for(
        cluster, tmp_path, monkeypatch, media_access=lambda tenant_id: None
    )
    target = tenant_target(server_name="nomedia.c3.example")
    backend.render(target)  # config and secrets applied, no StatefulSet yet
    store = LocalStore(tmp_path / "store")
    key = backend.archive_running(target.tenant_id, store)
    assert key is not None
    with store.open(key) as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
        reason = tar.extractfile(f"{target.tenant_id}/MEDIA_NOT_COPIED")
        assert reason is not None
        assert b"no platform admin" in reason.read()
