"""The fake backend's stand-in homeserver answers the platform's admin client as Synapse
does (nonce + HMAC registration, a second registration refused, password login, whoami),
runs detached under a pid file, and keeps its accounts across a restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from platform_core.errors import Conflict, UpstreamError
from platform_core.synapse_admin import SynapseAdminClient, login_with_password
from provisioner.backends.base import HomeserverTarget
from provisioner.backends.fake import FakeBackend
from provisioner.synapse_config import HomeserverSecrets
from tests.helpers.platform import poll

PASSWORD = "fake-admin-pass-1"


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def register(url: str, shared_secret: str) -> str:
    """Register the platform admin as the provisioner does; returns its user id."""

    async def go() -> str:
        async with SynapseAdminClient(url) as admin:
            answer = await admin.register_with_shared_secret(
                shared_secret=shared_secret, username="c3-admin", password=PASSWORD, admin=True
            )
        return str(answer["user_id"])

    return asyncio.run(go())


def test_stand_in_homeserver_registers_its_admin_once_like_synapse(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_path)
    secrets = HomeserverSecrets.generate()
    target = HomeserverTarget(
        tenant_id="tenant-1",
        server_name="acme.c3.test",
        public_baseurl="http://acme.c3.test/",
        port=backend.allocate_port(set()),
        limits={},
        secrets=secrets,
    )
    assert backend.render(target) is True
    assert backend.render(target) is False  # unchanged: nothing written, no restart needed
    backend.start(target)
    url = backend.upstream_url(target)
    try:
        assert backend.is_running("tenant-1")
        backend.start(target)  # idempotent: still one process
        poll(lambda: healthy(url), timeout=15, what="the stand-in homeserver")

        with pytest.raises(UpstreamError, match="403"):
            register(url, "wrong")
        assert register(url, secrets.registration_shared_secret) == "@c3-admin:acme.c3.test"
        with pytest.raises(Conflict):
            register(url, secrets.registration_shared_secret)
        reused = httpx.post(f"{url}/_synapse/admin/v1/register", json={"nonce": "x" * 128})
        assert reused.status_code == 400 and reused.json()["error"] == "unrecognised nonce"

        backend.stop("tenant-1")
        assert not backend.is_running("tenant-1") and not healthy(url)
        backend.start(target)
        poll(lambda: healthy(url), timeout=15, what="the restarted stand-in homeserver")
        token = asyncio.run(login_with_password(url, "@c3-admin:acme.c3.test", PASSWORD))
        whoami = httpx.get(
            f"{url}/_matrix/client/v3/account/whoami",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert whoami.json()["user_id"] == "@c3-admin:acme.c3.test"
        wrong = httpx.get(
            f"{url}/_matrix/client/v3/account/whoami", headers={"Authorization": "Bearer nope"}
        )
        assert (wrong.status_code, wrong.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    finally:
        backend.stop("tenant-1")

    log = (backend.tenant_dir("tenant-1") / "registrations.jsonl").read_text().splitlines()
    assert [json.loads(line)["user_id"] for line in log] == ["@c3-admin:acme.c3.test"]
    assert PASSWORD not in (backend.tenant_dir("tenant-1") / "accounts.json").read_text()
