"""The client readiness check on the real platform: real Synapse behind the real proxy, reached
as a client would (the tenant's public host name). A fresh tenant is ready for Element X; TURN
and federation checks follow the tenant's settings (on a platform that lets the API probe a
TURN server on loopback: C3_OUTBOUND_ALLOWED_NETWORKS)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.environment import platform_fixture
from tests.helpers.platform import RunningPlatform, wait_operation
from tests.tenant_api.readiness.stun import stun_server

pytestmark = pytest.mark.e2e

TURN_SECRET = "readiness-e2e-turn-static-secret"


loopback_turn_platform = platform_fixture(
    "c3-readiness",
    "The platform with the API allowed to probe a TURN server on loopback.",
    C3_OUTBOUND_ALLOWED_NETWORKS="127.0.0.1/32",
)


def readiness(platform: RunningPlatform, tenant_id: str) -> dict[str, Any]:
    with platform.api() as api:
        response = api.get(f"/v1/tenants/{tenant_id}/readiness")
    assert response.status_code == 200, response.text
    return dict(response.json())


def by_name(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in answer["checks"]}


def test_a_fresh_tenant_is_ready_for_element_x(platform: RunningPlatform) -> None:
    tenant = platform.create_tenant("ready-fresh")

    answer = readiness(platform, tenant["id"])

    checks = by_name(answer)
    assert list(checks) == ["sliding_sync", "password_login", "well_known", "turn", "federation"]
    assert answer["homeserver_url"] == tenant["homeserver_url"]
    for name in ("sliding_sync", "password_login", "well_known"):
        assert checks[name]["ok"] is True, checks[name]
        assert checks[name]["fix"] == ""
    assert "m.login.password" in checks["password_login"]["detail"]
    assert tenant["homeserver_url"] in checks["well_known"]["detail"]
    # No TURN server set: skipped, with a word on why it matters.
    assert checks["turn"]["ok"] is None and "TURN" in checks["turn"]["detail"]
    # Federation is off by default, and the proxy refuses the server-server API.
    assert checks["federation"]["ok"] is True, checks["federation"]
    assert "off" in checks["federation"]["detail"]
    assert answer["ready"] is True


def test_turn_and_federation_checks_follow_the_settings(
    loopback_turn_platform: RunningPlatform,
) -> None:
    platform = loopback_turn_platform
    tenant = platform.create_tenant("ready-calls")
    with stun_server("udp") as udp, stun_server("tcp") as tcp:
        udp_uri = f"turn:127.0.0.1:{udp.port}?transport=udp"
        tcp_uri = f"turn:127.0.0.1:{tcp.port}?transport=tcp"
        with platform.api() as api:
            patched = api.patch(
                f"/v1/tenants/{tenant['id']}",
                json={
                    "federation": {"mode": "open"},
                    "turn": {"uris": [udp_uri, tcp_uri], "shared_secret": TURN_SECRET},
                },
            )
        assert patched.status_code == 200, patched.text
        wait_operation(platform, patched.headers["location"])

        checks = by_name(readiness(platform, tenant["id"]))
        assert checks["turn"]["ok"] is True, checks["turn"]
        federation = checks["federation"]
        assert federation["ok"] is True, federation
        port = platform.proxy_url.rsplit(":", 1)[1]
        assert f"delegated to {tenant['server_name']}:{port}" in federation["detail"]

    # The TURN servers went away: the check fails, names the URIs and says what to do.
    answer = readiness(platform, tenant["id"])
    turn = by_name(answer)["turn"]
    assert turn["ok"] is False
    assert udp_uri in turn["detail"] and tcp_uri in turn["detail"]
    assert "TURN server" in turn["fix"]
    assert answer["ready"] is False
