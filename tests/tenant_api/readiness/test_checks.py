"""Readiness checks against homeservers C3 cannot make: one offering SSO only (C3 keeps password
sign-in on, so no tenant of ours is like that), one serving no sliding sync, one never
answering, and no proxy at all. Stand-in HTTP servers on loopback take the proxy's place
(``C3_READINESS_PROXY_URL``); the check code runs unchanged."""

from __future__ import annotations

import asyncio
import uuid
from ipaddress import ip_network
from typing import Any

from aiohttp import web

from platform_core.models import Tenant
from platform_core.settings import Settings, get_settings
from tenant_api.readiness.service import ReadinessCheck, check_readiness
from tenant_api.readiness.turn import parse_turn_uri
from tests.helpers.stand_in import serving
from tests.tenant_api.readiness.stun import stun_server


def a_tenant(**homeserver_settings: Any) -> Tenant:
    return Tenant(
        id=uuid.uuid4(), server_name="acme.c3.test", homeserver_settings=homeserver_settings
    )


def through(url: str, timeout: float = 2.0, **settings: Any) -> Settings:
    return get_settings().model_copy(
        update={"readiness_proxy_url": url, "readiness_timeout_s": timeout, **settings}
    )


def by_name(checks: list[ReadinessCheck]) -> dict[str, ReadinessCheck]:
    return {check.name: check for check in checks}


def homeserver(*, flows: list[str], sliding_sync: bool) -> Any:
    """A stand-in homeserver as the proxy would show it (Host-routed, no federation)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        assert request.host.startswith("acme.c3.test")  # the public name, as a client sends
        path = request.path
        if path == "/_matrix/client/versions":
            features = {"org.matrix.simplified_msc3575": True} if sliding_sync else {}
            return web.json_response({"versions": ["v1.11"], "unstable_features": features})
        if path == "/_matrix/client/v3/login":
            return web.json_response({"flows": [{"type": kind} for kind in flows]})
        if path.endswith("/org.matrix.simplified_msc3575/sync") and sliding_sync:
            return web.json_response({"errcode": "M_MISSING_TOKEN", "error": "Missing"}, status=401)
        if path == "/.well-known/matrix/client":
            body = {"m.homeserver": {"base_url": get_settings().homeserver_url("acme.c3.test")}}
            return web.json_response(body, headers={"Access-Control-Allow-Origin": "*"})
        return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized"}, status=404)

    return handle


async def test_an_sso_only_homeserver_fails_the_password_check_with_the_fix(
    platform_env: dict[str, str],
) -> None:
    handler = homeserver(flows=["m.login.sso", "m.login.token"], sliding_sync=True)
    async with serving(handler) as url:
        checks = by_name(await check_readiness(a_tenant(), through(url)))

    password = checks["password_login"]
    assert password.ok is False
    assert "m.login.sso" in password.detail
    assert "Element X cannot sign in where only SSO is offered" in password.fix
    assert checks["sliding_sync"].ok is True and checks["well_known"].ok is True


async def test_a_homeserver_without_sliding_sync_fails_that_check(
    platform_env: dict[str, str],
) -> None:
    async with serving(homeserver(flows=["m.login.password"], sliding_sync=False)) as url:
        checks = by_name(await check_readiness(a_tenant(), through(url)))

    sliding = checks["sliding_sync"]
    assert sliding.ok is False
    assert "not 401 M_MISSING_TOKEN" in sliding.detail and "HTTP 404" in sliding.detail
    assert "Element X" in sliding.fix
    assert checks["password_login"].ok is True


async def test_no_proxy_gives_failed_checks_with_a_fix_not_an_error(
    platform_env: dict[str, str],
) -> None:
    async with serving(homeserver(flows=[], sliding_sync=False)) as url:
        pass  # its port is free again: nothing listens there

    checks = await check_readiness(a_tenant(federation={"mode": "open"}), through(url))

    assert [c.name for c in checks if c.ok is False] == [
        "sliding_sync",
        "password_login",
        "well_known",
        "federation",
    ]
    for check in checks:
        if check.ok is False:
            assert "could not be reached" in check.detail and "proxy" in check.fix


async def test_a_homeserver_that_never_answers_fails_within_the_timeout(
    platform_env: dict[str, str],
) -> None:
    released = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await released.wait()  # until the checks have given up
        return web.Response(status=503)

    async with serving(hang) as url:
        checks = await check_readiness(a_tenant(), through(url, timeout=0.5))
        released.set()

    assert all(c.ok is False and "in time" in c.detail for c in checks if c.name != "turn")


async def test_a_turn_server_on_an_internal_address_is_not_probed(
    platform_env: dict[str, str],
) -> None:
    """TURN URIs are the tenant's choice: probing any address would let a tenant scan the
    platform's network through the readiness check."""
    handler = homeserver(flows=["m.login.password"], sliding_sync=True)
    async with serving(handler) as url:
        with stun_server("udp") as udp, stun_server("tcp") as tcp:
            tenant = a_tenant(
                turn={
                    "uris": [
                        f"turn:127.0.0.1:{udp.port}?transport=udp",
                        f"turn:127.0.0.1:{tcp.port}?transport=tcp",
                    ]
                }
            )
            refused = by_name(await check_readiness(tenant, through(url)))["turn"]
            assert (udp.requests, tcp.requests) == (0, 0)

            allowed = through(url, outbound_allowed_networks=[ip_network("127.0.0.0/8")])
            probed = by_name(await check_readiness(tenant, allowed))["turn"]

    assert refused.ok is False
    assert "not probed" in refused.detail and "loopback" in refused.detail
    assert "C3_OUTBOUND_ALLOWED_NETWORKS" in refused.fix
    assert probed.ok is True, probed
    assert udp.requests >= 1 and tcp.requests == 1


def test_turn_uris_are_read_as_clients_read_them() -> None:
    assert parse_turn_uri("turn:turn.example.com").port == 3478
    assert parse_turn_uri("turn:turn.example.com").transport == "udp"
    assert parse_turn_uri("turn:turn.example.com:80?transport=tcp").transport == "tcp"
    secure = parse_turn_uri("turns:turn.example.com:443?transport=tcp")
    assert (secure.host, secure.port, secure.transport) == ("turn.example.com", 443, "tls")
    assert parse_turn_uri("turn:[2001:db8::1]:3479").host == "2001:db8::1"
