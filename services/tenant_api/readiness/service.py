"""Client readiness: can Element, Element X and SDKs use this tenant's homeserver? Each check
talks to the homeserver THROUGH THE PROXY, at the public base URL a client is given
(``https://<server_name>``), so it sees what a client sees: DNS, the proxy's routing and guard,
the tenant's status, Synapse's answers.

``check_readiness(tenant)`` returns one ``ReadinessCheck`` per question, in this order:

- ``sliding_sync``: Element X syncs only with simplified sliding sync (MSC4186): Synapse lists
  ``org.matrix.simplified_msc3575`` in ``/versions`` and the endpoint answers an anonymous call
  with 401 ``M_MISSING_TOKEN`` (not 404);
- ``password_login``: ``GET /login`` offers ``m.login.password`` (Element X cannot sign in
  where only SSO is offered);
- ``well_known``: ``/.well-known/matrix/client`` names the public base URL and is readable
  cross-origin (CORS), so web clients and auto-discovery find the homeserver;
- ``turn``: every configured TURN URI answers a STUN Binding request (skipped, ``ok=None``,
  when the tenant has no TURN server);
- ``federation``: as the tenant's settings say — on: ``/.well-known/matrix/server`` delegates
  to the proxy and ``/_matrix/key/v2/server`` serves the tenant's keys; off: both refused.

Every check is bounded by ``C3_READINESS_TIMEOUT_S`` and they run at once; an unreachable
proxy or homeserver makes checks fail with the reason, never an error of the API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from platform_core.homeserver_settings import FederationMode, federation_mode
from platform_core.models import Tenant
from platform_core.settings import Mode, Settings, get_settings
from tenant_api.readiness import turn

log = logging.getLogger(__name__)

SLIDING_SYNC_FEATURE = "org.matrix.simplified_msc3575"
SLIDING_SYNC_PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
# What the well-known check sends as a web client's Origin (any origin must be allowed).
WEB_CLIENT_ORIGIN = "https://app.element.io"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NOT_SERVING_FIX = (
    "Check that the tenant is active and its last operation succeeded (GET /v1/tenants/{id}); "
    "an operator can retry a failed one"
)


@dataclass(frozen=True)
class ReadinessCheck:
    """One answer: ``ok`` True (passed), False (failed: ``fix`` says what to do) or None
    (skipped: nothing to check, e.g. no TURN server set)."""

    name: str
    title: str
    ok: bool | None
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Target:
    """The tenant as a client reaches it."""

    tenant_id: str
    server_name: str
    public_base: str  # https://acme.c3.example.com — what clients are given
    settings: Mapping[str, Any]  # the tenant's homeserver settings
    federation_port: int


class _Unreachable(Exception):
    """No HTTP answer at all (DNS, connection, TLS, timeout)."""


class _Client:
    """HTTP to the tenant through the proxy: requests go to ``connect`` (the proxy's address)
    with the public host name as Host (and TLS server name), as a client's would."""

    def __init__(self, http: httpx.AsyncClient, public_base: str, connect: str) -> None:
        self.http = http
        public_host = urlsplit(public_base).hostname or ""
        connect_host = urlsplit(connect).hostname
        same = connect == public_base or connect_host == public_host
        self.extensions = {} if same else {"sni_hostname": public_host}

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(method, path, extensions=self.extensions, **kwargs)
        except httpx.TimeoutException:
            raise _Unreachable("no answer in time") from None
        except httpx.HTTPError as exc:
            raise _Unreachable(_reason(exc)) from None


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in words (the innermost cause: DNS, refused, TLS …)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip()
    return text[:200] if text else type(exc).__name__


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _describe(response: httpx.Response) -> str:
    """``HTTP 404 M_UNRECOGNIZED: Unrecognized request`` (the Matrix error, if there is one)."""
    body = _json(response)
    errcode, error = body.get("errcode"), body.get("error")
    if errcode:
        return f"HTTP {response.status_code} {errcode}: {str(error or '')[:160]}".rstrip(": ")
    return f"HTTP {response.status_code}"


def connect_origin(settings: Settings, public_base: str) -> str:
    """Where the checks connect: ``C3_READINESS_PROXY_URL``; else in a local run the proxy's
    own address (tenant host names need not resolve on this machine); else the public URL
    itself, through DNS like any client."""
    if settings.readiness_proxy_url:
        return settings.readiness_proxy_url
    if settings.mode is Mode.LOCAL:
        host = settings.proxy_host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 — a listen address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{settings.proxy_port}"
    return public_base


async def check_readiness(tenant: Tenant, settings: Settings | None = None) -> list[ReadinessCheck]:
    """Run every readiness check against ``tenant``'s homeserver through the proxy; returns
    them in a fixed order (see the module docstring). Takes at most ``C3_READINESS_TIMEOUT_S``
    seconds and a half; never raises for anything the network does."""
    settings = settings or get_settings()
    public_base = settings.homeserver_url(tenant.server_name)
    proxy_public = urlsplit(settings.effective_proxy_public_url)
    target = _Target(
        tenant_id=str(tenant.id),
        server_name=tenant.server_name,
        public_base=public_base,
        settings=dict(tenant.homeserver_settings or {}),
        federation_port=proxy_public.port or _DEFAULT_PORTS.get(proxy_public.scheme, 443),
    )
    timeout = settings.readiness_timeout_s
    connect = connect_origin(settings, public_base)
    async with httpx.AsyncClient(
        base_url=connect,
        headers={"Host": urlsplit(public_base).netloc, "User-Agent": "C3-readiness-check"},
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    ) as http:
        client = _Client(http, public_base, connect)
        checks = [
            _guarded("sliding_sync", "Sliding sync (Element X)", _sliding_sync(client), timeout),
            _guarded("password_login", "Password sign-in", _password_login(client), timeout),
            _guarded("well_known", "Server discovery (.well-known)", _well_known(client, target), timeout),
            _guarded("turn", "TURN server (calls)", _turn(target, settings), timeout),
            _guarded("federation", "Federation", _federation(client, target), timeout),
        ]  # fmt: skip
        return list(await asyncio.gather(*checks))


Outcome = tuple[bool | None, str, str]  # ok, detail, fix


async def _guarded(
    name: str,
    title: str,
    check: Awaitable[Outcome],
    timeout: float,  # noqa: ASYNC109 — a bound, not a cancel
) -> ReadinessCheck:
    """One check, bounded in time; what goes wrong becomes a failed check, never an error."""
    try:
        # Half a second over the requests' own timeout, so theirs (which say more) come first.
        async with asyncio.timeout(timeout + 0.5):
            ok, detail, fix = await check
    except _Unreachable as exc:
        ok, detail, fix = False, f"The homeserver could not be reached: {exc}", _unreachable_fix()
    except TimeoutError:
        ok, detail, fix = False, "No answer in time", _unreachable_fix()
    except Exception as exc:  # noqa: BLE001 — a readiness answer, not a 500
        log.warning("readiness check %s failed unexpectedly", name, exc_info=True)
        ok, detail, fix = False, f"The check could not run ({type(exc).__name__})", _NOT_SERVING_FIX
    return ReadinessCheck(name, title, ok, detail, fix if ok is False else "")


def _unreachable_fix() -> str:
    return (
        "Point DNS for the homeserver's name at the proxy (its load balancer) and check that "
        "the proxy is running (GET /_c3/health)"
    )


# The checks ------------------------------------------------------------------------------


async def _sliding_sync(client: _Client) -> Outcome:
    versions, sync = await asyncio.gather(
        client.request("GET", "/_matrix/client/versions"),
        client.request("POST", SLIDING_SYNC_PATH, json={}),
    )
    if versions.status_code != 200:
        return False, f"/_matrix/client/versions answered {_describe(versions)}", _NOT_SERVING_FIX
    features = _json(versions).get("unstable_features") or {}
    advertised = isinstance(features, dict) and features.get(SLIDING_SYNC_FEATURE) is True
    served = sync.status_code == 401 and _json(sync).get("errcode") == "M_MISSING_TOKEN"
    if not served:
        return (
            False,
            f"{SLIDING_SYNC_PATH} answered {_describe(sync)}, not 401 M_MISSING_TOKEN",
            "Run Synapse 1.114 or later and let the proxy forward that path: Element X cannot "
            "sync without simplified sliding sync (MSC4186)",
        )
    if not advertised:
        return (
            False,
            f"The endpoint answers, but /versions does not list {SLIDING_SYNC_FEATURE}",
            f"Have Synapse list {SLIDING_SYNC_FEATURE} in /versions (Synapse 1.114 or later): "
            "Element X looks there before it syncs",
        )
    return True, "Simplified sliding sync (MSC4186) is advertised and served", ""


async def _password_login(client: _Client) -> Outcome:
    response = await client.request("GET", "/_matrix/client/v3/login")
    if response.status_code != 200:
        return False, f"/_matrix/client/v3/login answered {_describe(response)}", _NOT_SERVING_FIX
    flows = _json(response).get("flows") or []
    kinds = [
        str(flow["type"])
        for flow in flows
        if isinstance(flow, dict) and isinstance(flow.get("type"), str)
    ]
    if "m.login.password" in kinds:
        return True, f"Sign-in flows offered: {', '.join(kinds)}", ""
    offered = ", ".join(kinds) or "none"
    return (
        False,
        f"Password sign-in is not offered (flows: {offered})",
        "Offer password sign-in beside SSO (Synapse password_config.enabled, C3's default): "
        "Element X cannot sign in where only SSO is offered",
    )


async def _well_known(client: _Client, target: _Target) -> Outcome:
    response = await client.request(
        "GET", "/.well-known/matrix/client", headers={"Origin": WEB_CLIENT_ORIGIN}
    )
    path = f"{target.public_base}/.well-known/matrix/client"
    if response.status_code != 200:
        return (
            False,
            f"{path} answered {_describe(response)}",
            "The proxy serves it for every active tenant: " + _NOT_SERVING_FIX,
        )
    homeserver = _json(response).get("m.homeserver")
    base_url = homeserver.get("base_url") if isinstance(homeserver, dict) else None
    if not isinstance(base_url, str) or base_url.rstrip("/") != target.public_base:
        return (
            False,
            f"It names {base_url!r} as the homeserver, not {target.public_base}",
            "Set C3_PROXY_PUBLIC_URL to the URL clients reach the proxy at (scheme and port)",
        )
    allowed = response.headers.get("access-control-allow-origin")
    if allowed not in ("*", WEB_CLIENT_ORIGIN):
        return (
            False,
            "It is served without CORS (no Access-Control-Allow-Origin): web clients cannot "
            "read it",
            "Let Access-Control-Allow-Origin: * through on /.well-known/matrix/client (a load "
            "balancer or CDN in front of the proxy may strip it)",
        )
    return True, f"It names {target.public_base}, with CORS", ""


async def _turn(target: _Target, settings: Settings) -> Outcome:
    uris = list((target.settings.get("turn") or {}).get("uris") or [])
    if not uris:
        return (
            None,
            "No TURN server is set: calls between users behind NAT or firewalls may not connect",
            "",
        )
    problems: list[str] = []
    probes: list[Awaitable[str | None]] = []
    probed: list[str] = []
    for uri in uris:
        try:
            parsed = turn.parse_turn_uri(uri)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        probes.append(
            turn.probe(parsed, settings.readiness_timeout_s, settings.outbound_allowed_networks)
        )
        probed.append(uri)
    for uri, problem in zip(probed, await asyncio.gather(*probes), strict=True):
        if problem is not None:
            problems.append(f"{uri}: {problem}")
    if any("not probed" in problem for problem in problems):
        return (
            False,
            "; ".join(problems),
            "Give TURN URIs that clients on the internet can reach; an operator may allow an "
            "internal TURN server with C3_OUTBOUND_ALLOWED_NETWORKS",
        )
    if problems:
        return (
            False,
            "; ".join(problems),
            "Check that the TURN server runs and its ports are open to the internet "
            "(firewall, security group), or correct the URIs in the homeserver settings",
        )
    return True, f"{len(uris)} TURN URI(s) answered a STUN Binding request", ""


async def _federation(client: _Client, target: _Target) -> Outcome:
    mode = federation_mode(target.settings)
    discovery, keys = await asyncio.gather(
        client.request("GET", "/.well-known/matrix/server"),
        client.request("GET", "/_matrix/key/v2/server"),
    )
    if discovery.status_code == 421:  # the proxy has no homeserver for this host at all
        return False, f"The proxy answered {_describe(discovery)}", _NOT_SERVING_FIX
    if mode is FederationMode.OFF:
        return _federation_refused(discovery, keys)
    return _federation_served(target, mode, discovery, keys)


def _federation_refused(discovery: httpx.Response, keys: httpx.Response) -> Outcome:
    served = [
        path
        for path, answer in (("/.well-known/matrix/server", discovery), ("/_matrix/key/v2/server", keys))
        if answer.status_code < 400
    ]  # fmt: skip
    if served:
        return (
            False,
            f"Federation is off, but {' and '.join(served)} answered",
            "Run `c3 reconcile` (or PATCH the tenant's federation again) so the proxy's route "
            "follows the tenant's settings",
        )
    return True, "Federation is off, and the server-server API and discovery are refused", ""


def _federation_served(
    target: _Target, mode: FederationMode, discovery: httpx.Response, keys: httpx.Response
) -> Outcome:
    expected = f"{target.server_name}:{target.federation_port}"
    delegated = _json(discovery).get("m.server") if discovery.status_code == 200 else None
    if delegated != expected:
        found = repr(delegated) if delegated else _describe(discovery)
        return (
            False,
            f"Federation is {mode.value}, but /.well-known/matrix/server gives {found}, "
            f"not {expected!r}",
            "Run `c3 reconcile` so the proxy's route follows the tenant's settings",
        )
    key_owner = _json(keys).get("server_name") if keys.status_code == 200 else None
    if key_owner != target.server_name:
        return (
            False,
            f"Federation is {mode.value}, but /_matrix/key/v2/server answered {_describe(keys)}",
            "The homeserver's federation listener does not answer: apply the tenant's settings "
            "again (PATCH /v1/tenants/{id}) and check its last operation succeeded",
        )
    detail = f"Federation is {mode.value}: delegated to {expected}, signing keys served"
    if not target.public_base.startswith("https://"):
        detail += " (remote servers need HTTPS on the server name: this platform is plain HTTP)"
    return True, detail, ""
