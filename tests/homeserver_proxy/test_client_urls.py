"""The URLs clients build: media requests that lost the ``/t/<slug>`` prefix (matrix-js-sdk),
and one answer to "where is this homeserver" per way in (``/.well-known/matrix/client`` and a
login answer's ``well_known``). The proxy runs in-process (real Redis route table) in front of
stand-in homeservers that record what reached them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from homeserver_proxy.client_urls import login_answer_for, media_server_name
from tests.helpers.stand_in import serving
from tests.homeserver_proxy.test_federation import Proxy, StandIn, running_proxy

# What Synapse answers a login with: its public_baseurl, the tenant's Host form.
SYNAPSE_BASE_URL = "http://{server_name}:8080/"


@dataclass
class Homeserver(StandIn):
    server_name: str = ""
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)


@asynccontextmanager
async def homeserver(server_name: str) -> AsyncIterator[Homeserver]:
    stand_in = Homeserver(server_name=server_name)

    async def answer(request: web.Request) -> web.StreamResponse:
        stand_in.paths.append(request.raw_path)
        stand_in.requests.append(
            (request.method, request.raw_path, request.headers.get("Authorization"))
        )
        if request.method == "POST" and request.path.endswith("/login"):
            return web.json_response(
                {
                    "user_id": f"@ann:{server_name}",
                    "access_token": "syt_token",
                    "device_id": "DEV",
                    "well_known": {
                        "m.homeserver": {
                            "base_url": SYNAPSE_BASE_URL.format(server_name=server_name)
                        },
                        "m.identity_server": {"base_url": "https://id.example.com"},
                    },
                }
            )
        if "/download/" in request.path:
            return web.Response(body=f"bytes of {server_name}".encode())
        return web.json_response({"server": server_name})

    async with serving(answer) as url:
        stand_in.url = url
        yield stand_in


@dataclass
class Tenants:
    proxy: Proxy
    acme: Homeserver
    globex: Homeserver


@pytest.fixture
async def tenants(platform_env: dict[str, str]) -> AsyncIterator[Tenants]:
    async with AsyncExitStack() as stack:
        acme = await stack.enter_async_context(homeserver("acme.c3.test"))
        globex = await stack.enter_async_context(homeserver("globex.c3.test"))
        proxy = await stack.enter_async_context(running_proxy(acme, "http://127.0.0.1:8080"))
        proxy.publish("acme", upstream=acme.url)
        proxy.publish("globex", upstream=globex.url)
        yield Tenants(proxy, acme, globex)


MEDIA_PATHS = [
    "/_matrix/client/v1/media/download/{server}/AbCd",
    "/_matrix/client/v1/media/thumbnail/{server}/AbCd?width=32&height=32",
    "/_matrix/media/v3/download/{server}/AbCd/q3.txt",
    "/_matrix/media/r0/thumbnail/{server}/AbCd?width=32&height=32",
]


@pytest.mark.parametrize("path", MEDIA_PATHS)
async def test_media_that_lost_the_prefix_reaches_the_tenant_its_path_names(
    tenants: Tenants, path: str
) -> None:
    # What matrix-js-sdk builds from http://127.0.0.1:8080/t/acme: the prefix is gone.
    answer = await tenants.proxy.client.get(
        path.format(server="acme.c3.test"),
        headers={"Host": "127.0.0.1:8080", "Authorization": "Bearer syt_ann"},
    )
    assert answer.status_code == 200, answer.text
    assert tenants.acme.paths == [path.format(server="acme.c3.test")]
    assert tenants.acme.requests[0][2] == "Bearer syt_ann"
    assert tenants.globex.paths == []


async def test_a_host_or_prefix_wins_over_the_server_name_in_a_media_path(
    tenants: Tenants,
) -> None:
    """A tenant's client fetching another server's media (federation) asks its own homeserver,
    which fetches it: the media's server name never moves the request to that tenant."""
    remote = "/_matrix/client/v1/media/download/globex.c3.test/AbCd"
    by_prefix = await tenants.proxy.client.get(f"/t/acme{remote}")
    by_host = await tenants.proxy.client.get(remote, headers={"Host": "acme.c3.test:8080"})
    assert by_prefix.content == by_host.content == b"bytes of acme.c3.test"
    assert tenants.acme.paths == [remote, remote]
    assert tenants.globex.paths == []

    # With nothing naming a tenant, the request goes to the tenant that serves that media.
    lost_prefix = await tenants.proxy.client.get(remote, headers={"Host": "127.0.0.1:8080"})
    assert lost_prefix.content == b"bytes of globex.c3.test"
    assert tenants.globex.paths == [remote]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/_matrix/client/v3/sync"),  # not media: names no tenant
        ("GET", "/_matrix/client/v1/media/config"),
        ("POST", "/_matrix/media/v3/upload"),
        ("PUT", "/_matrix/media/v3/upload/acme.c3.test/AbCd"),
        ("POST", "/_matrix/client/v1/media/download/acme.c3.test/AbCd"),  # not a read
        ("GET", "/_matrix/client/v1/media/download/nobody.c3.test/AbCd"),  # no such tenant
        ("GET", "/_matrix/client/v1/media/download/acme.c3.test:8448/AbCd"),  # another server
        ("GET", "/_matrix/client/v1/media/download/acme/AbCd"),  # a slug is no server name
        ("GET", "/_matrix/client/v1/media/preview_url?url=https://acme.c3.test/"),
    ],
)
async def test_everything_else_without_a_tenant_is_still_421(
    tenants: Tenants, method: str, path: str
) -> None:
    answer = await tenants.proxy.client.request(method, path, headers={"Host": "127.0.0.1:8080"})
    assert answer.status_code == 421
    assert answer.json()["errcode"] == "M_UNRECOGNIZED"
    assert tenants.acme.paths == tenants.globex.paths == []


async def test_media_routed_by_its_path_passes_the_same_guards(tenants: Tenants) -> None:
    host = {"Host": "127.0.0.1:8080"}
    traversal = "/_matrix/media/v3/download/acme.c3.test/%2e%2e/%2e%2e/%2e%2e/_synapse/admin/v1/x"
    refused = await tenants.proxy.client.get(traversal, headers=host)
    assert refused.status_code == 400 and refused.json()["errcode"] == "M_UNRECOGNIZED"
    assert tenants.acme.paths == []


async def test_media_of_a_suspended_tenant_is_refused(tenants: Tenants) -> None:
    host = {"Host": "127.0.0.1:8080"}
    tenants.proxy.publish("acme", upstream=tenants.acme.url, status="suspended")
    suspended = await tenants.proxy.client.get(
        "/_matrix/client/v1/media/download/acme.c3.test/AbCd", headers=host
    )
    assert suspended.status_code == 403 and suspended.json()["errcode"] == "M_FORBIDDEN"
    assert tenants.acme.paths == []


def test_media_server_names_are_read_from_download_and_thumbnail_paths_only() -> None:
    assert media_server_name("GET", "/_matrix/media/v3/download/ACME.c3.test/x") == "acme.c3.test"
    assert media_server_name("OPTIONS", "/_matrix/client/v1/media/thumbnail/a.test/x") == "a.test"
    assert media_server_name("GET", "/_matrix/media/v3/download/a.test") is None  # no media id
    assert media_server_name("DELETE", "/_matrix/media/v3/download/a.test/x") is None
    assert media_server_name("GET", "/_matrix/media/v3/upload/a.test/x") is None


LOGIN = {
    "type": "m.login.password",
    "identifier": {"type": "m.id.user", "user": "ann"},
    "password": "secret",
}


@pytest.mark.parametrize(
    ("prefix", "headers", "base_url"),
    [
        ("/t/acme", {"Host": "127.0.0.1:8080"}, "http://127.0.0.1:8080/t/acme"),
        ("", {"Host": "acme.c3.test:8080"}, "http://acme.c3.test:8080"),
        ("", {"Host": "ACME.c3.test.:8080"}, "http://acme.c3.test:8080"),
    ],
)
async def test_login_and_well_known_name_the_same_homeserver_url(
    tenants: Tenants, prefix: str, headers: dict[str, str], base_url: str
) -> None:
    client = tenants.proxy.client
    well_known = await client.get(f"{prefix}/.well-known/matrix/client", headers=headers)
    assert well_known.json() == {"m.homeserver": {"base_url": base_url}}

    login = await client.post(f"{prefix}/_matrix/client/v3/login", headers=headers, json=LOGIN)
    assert login.status_code == 200, login.text
    answer = login.json()
    # Element switches to this URL after signing in: it must be where the client already is.
    assert answer["well_known"]["m.homeserver"] == {"base_url": base_url}
    assert answer["well_known"]["m.identity_server"] == {"base_url": "https://id.example.com"}
    assert answer["access_token"] == "syt_token" and answer["user_id"] == "@ann:acme.c3.test"
    assert login.headers["content-length"] == str(len(login.content))


async def test_other_answers_are_forwarded_untouched(tenants: Tenants) -> None:
    answer = await tenants.proxy.client.get("/t/acme/_matrix/client/v3/login")
    assert answer.json() == {"server": "acme.c3.test"}


def test_login_answers_without_well_known_or_json_are_left_alone() -> None:
    base = "http://127.0.0.1:8080/t/acme"
    assert login_answer_for(base, b'{"user_id": "@a:acme.c3.test"}') is None
    assert login_answer_for(base, b"not json") is None
    assert login_answer_for(base, b"[1]") is None
    same = {"well_known": {"m.homeserver": {"base_url": base}}}
    assert login_answer_for(base, json.dumps(same).encode()) is None
    odd = {"well_known": {"m.homeserver": "x"}}
    fixed = login_answer_for(base, json.dumps(odd).encode())
    assert fixed is not None
    assert json.loads(fixed)["well_known"] == {"m.homeserver": {"base_url": base}}


async def test_unknown_host_well_known_is_421(tenants: Tenants) -> None:
    answer = await tenants.proxy.client.get(
        "/.well-known/matrix/client", headers={"Host": "127.0.0.1:8080"}
    )
    assert answer.status_code == 421


@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v3/login/sso/redirect?redirectUrl=http%3A%2F%2Fapp.example%2F",
        "/_matrix/client/v3/login/sso/redirect/oidc?redirectUrl=http%3A%2F%2Fapp.example%2F",
        "/_matrix/client/r0/login/cas/redirect?redirectUrl=http%3A%2F%2Fapp.example%2F",
        "/_matrix/client/v3/auth/m.login.sso/fallback/web?session=abc",
    ],
)
async def test_single_sign_on_under_the_prefix_starts_at_the_tenants_host_name(
    tenants: Tenants, path: str
) -> None:
    """The identity provider calls back at Synapse's public_baseurl (the host name) and Synapse
    looks for the session cookie it set where the flow started: the two must be one host."""
    started = await tenants.proxy.client.get(f"/t/acme{path}")
    assert started.status_code == 302
    assert started.headers["location"] == f"http://acme.c3.test:8080{path}"
    assert tenants.acme.paths == []

    by_host = await tenants.proxy.client.get(path, headers={"Host": "acme.c3.test:8080"})
    assert by_host.status_code == 200
    assert tenants.acme.paths == [path]


async def test_single_sign_on_of_a_suspended_tenant_is_refused_not_redirected(
    tenants: Tenants,
) -> None:
    tenants.proxy.publish("acme", upstream=tenants.acme.url, status="suspended")
    answer = await tenants.proxy.client.get("/t/acme/_matrix/client/v3/login/sso/redirect")
    assert answer.status_code == 403
