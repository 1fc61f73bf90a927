"""Federation through the proxy on real Synapse: a tenant that turns federation on is found and
reached by remote servers through the proxy (by Host, like a remote homeserver does); turned
off again, the proxy closes the server-server API at once."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.helpers.platform import RunningPlatform, poll, wait_operation

pytestmark = pytest.mark.e2e


def set_federation(platform: RunningPlatform, tenant_id: str, federation: dict[str, Any]) -> None:
    with platform.api() as api:
        patched = api.patch(f"/v1/tenants/{tenant_id}", json={"federation": federation})
    assert patched.status_code == 200, patched.text
    wait_operation(platform, patched.headers["location"])


def test_remote_servers_reach_a_federating_tenant_through_the_proxy(
    platform: RunningPlatform,
) -> None:
    tenant = platform.create_tenant("fed-open")
    server_name = tenant["server_name"]
    port = int(platform.proxy_url.rsplit(":", 1)[1])
    # What a remote homeserver sends after discovery: the delegated name and port as Host.
    remote = httpx.Client(base_url=platform.proxy_url, headers={"Host": f"{server_name}:{port}"})

    with remote:
        closed = remote.get("/.well-known/matrix/server")
        assert closed.status_code == 404 and closed.json()["errcode"] == "M_NOT_FOUND"
        refused = remote.get("/_matrix/federation/v1/version")
        assert refused.status_code == 404
        assert refused.json()["error"] == "This homeserver does not federate"

        set_federation(platform, tenant["id"], {"mode": "open"})

        def synapse_answers() -> dict[str, Any] | None:
            answer = remote.get("/_matrix/federation/v1/version")
            return answer.json() if answer.status_code == 200 else None

        version = poll(synapse_answers, timeout=30, what="Synapse's federation API via the proxy")
        assert version["server"]["name"] == "Synapse"
        assert remote.get("/.well-known/matrix/server").json() == {
            "m.server": f"{server_name}:{port}"
        }
        keys = remote.get("/_matrix/key/v2/server")
        assert keys.status_code == 200
        assert keys.json()["server_name"] == server_name  # the tenant's own signing keys
        assert keys.json()["verify_keys"]
        # Client traffic of the same tenant still goes through as before.
        assert remote.get("/_matrix/client/versions").status_code == 200

        set_federation(platform, tenant["id"], {"mode": "off"})
        poll(
            lambda: remote.get("/_matrix/federation/v1/version").status_code == 404,
            timeout=30,
            what="the proxy to close the server-server API again",
        )
        assert remote.get("/.well-known/matrix/server").status_code == 404
