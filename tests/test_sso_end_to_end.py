"""Single sign-on end to end: a tenant's real Synapse signs a user in through a test OpenID
Connect provider (https on loopback, its own CA), every homeserver hop through the proxy — and
the outbound guard: the provider's network must be allowed by the operator, and an issuer that
points into an internal network fails the reconfigure with a clear error."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import re
import secrets
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import psycopg
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt

from tests.helpers.environment import isolated_platform
from tests.helpers.platform import RunningPlatform, poll, wait_operation
from tests.helpers.tls import make_certificates

pytestmark = pytest.mark.e2e

CLIENT_ID = "c3-sso-e2e"
CLIENT_SECRET = "sso-e2e-client-secret"
CLIENT_REDIRECT = "https://app.client.test/after-login?keep=1"


# A test CA and a server certificate for 127.0.0.1 ---------------------------------------


# A minimal OpenID Connect provider --------------------------------------------------------


@dataclass
class LoopbackIdP:
    """Discovery, an authorize endpoint that signs "alice" in at once and redirects back
    with a code, a token endpoint (client_secret_basic) issuing an RS256 id_token with the
    nonce, JWKS and userinfo. ``seen`` records every request it answered."""

    issuer: str = ""
    signing_key: str = ""
    public_jwk: dict[str, Any] = field(default_factory=dict)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "authorize",
            "token_endpoint": self.issuer + "token",
            "jwks_uri": self.issuer + "jwks",
            "userinfo_endpoint": self.issuer + "userinfo",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        }

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        assert query["client_id"] == CLIENT_ID and query["response_type"] == "code", query
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"nonce": query.get("nonce", ""), "redirect_uri": query["redirect_uri"]}
        location = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
        return 302, {"Location": location}, b""

    def token(self, headers: Any, form: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if headers.get("Authorization") != f"Basic {expected}":
            return 401, {}, b'{"error": "invalid_client"}'
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
            return 400, {}, b'{"error": "invalid_grant"}'
        now = int(dt.datetime.now(dt.UTC).timestamp())
        claims = {
            "iss": self.issuer,
            "sub": "alice-0001",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": grant["nonce"],
            "preferred_username": "alice",
        }
        id_token = jwt.encode(claims, self.signing_key, algorithm="RS256", headers={"kid": "k1"})
        body = {"access_token": "idp-access", "token_type": "Bearer", "id_token": id_token}
        return 200, {}, json.dumps(body).encode()

    def answer(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(path)
        self.seen.append(parts.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/.well-known/openid-configuration":
            return 200, {}, json.dumps(self.discovery()).encode()
        if parts.path == "/authorize" and method == "GET":
            return self.authorize(query)
        if parts.path == "/token" and method == "POST":
            return self.token(headers, {k: v[0] for k, v in parse_qs(body.decode()).items()})
        if parts.path == "/jwks":
            return 200, {}, json.dumps({"keys": [self.public_jwk]}).encode()
        if parts.path == "/userinfo":
            return (
                200,
                {},
                json.dumps({"sub": "alice-0001", "preferred_username": "alice"}).encode(),
            )
        return 404, {}, b'{"error": "not_found"}'


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certificates(tmp_path_factory.mktemp("sso-tls"))


@pytest.fixture(scope="module")
def idp(certificates: tuple[Path, Path, Path]) -> Iterator[LoopbackIdP]:
    _, cert_file, key_file = certificates
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = jwk.construct(pem, "RS256").public_key().to_dict()
    provider = LoopbackIdP(signing_key=pem, public_jwk={**public, "kid": "k1", "use": "sig"})

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, payload = provider.answer(self.command, self.path, self.headers, body)
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    provider.issuer = f"https://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield provider
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def sso_platform(
    platform_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    certificates: tuple[Path, Path, Path],
) -> Iterator[RunningPlatform]:
    """The platform with the test IdP's network allowed (C3_OUTBOUND_ALLOWED_NETWORKS) and its
    CA trusted by the homeservers: Synapse's HTTP client uses OpenSSL's default trust store,
    which SSL_CERT_FILE replaces (here: the test CA only)."""
    ca_file = certificates[0]
    with isolated_platform(
        platform_env,
        tmp_path_factory.mktemp("c3-sso"),
        C3_OUTBOUND_ALLOWED_NETWORKS="127.0.0.1/32",
        SSL_CERT_FILE=str(ca_file),
    ) as running:
        yield running


def oidc_settings(issuer: str) -> dict[str, Any]:
    return {
        "oidc": {
            "issuer": issuer,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "display_name": "Test IdP",
        }
    }


@dataclass
class Hop:
    url: str
    status: int
    location: str | None


def via_proxy(platform: RunningPlatform, url: str, cookie: str | None) -> httpx.Response:
    """GET ``url`` (an http URL of the proxy or of a tenant's public name) from the proxy, as
    a browser would with the tenant's name resolving to the proxy (wildcard DNS)."""
    parts = urlsplit(url)
    assert parts.scheme == "http", url
    headers = {"Host": parts.netloc, **({"Cookie": cookie} if cookie else {})}
    target = f"{platform.proxy_url}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    return httpx.get(target, headers=headers, timeout=30)


def sign_in(
    platform: RunningPlatform, start: str, idp: LoopbackIdP, ca_file: Path
) -> tuple[list[Hop], httpx.Response]:
    """Follow the SSO redirects from ``start`` as a browser does (cookies kept per host),
    until an answer that is not a redirect; no URL may come round twice."""
    hops: list[Hop] = []
    cookies: dict[str, dict[str, str]] = {}
    url = start
    for _ in range(10):
        assert url not in [hop.url for hop in hops], f"redirect loop: {[h.url for h in hops]}"
        host = urlsplit(url).netloc
        jar = "; ".join(f"{k}={v}" for k, v in cookies.get(host, {}).items()) or None
        if url.startswith(idp.issuer):
            response = httpx.get(url, verify=str(ca_file), timeout=30)
        else:
            response = via_proxy(platform, url, jar)
        for raw in response.headers.get_list("set-cookie"):
            name, _, rest = raw.partition("=")
            cookies.setdefault(host, {})[name.strip()] = rest.split(";", 1)[0]
        location = response.headers.get("location")
        hops.append(Hop(url, response.status_code, location))
        if response.status_code not in (301, 302, 303, 307, 308):
            return hops, response
        assert location is not None
        url = location
    raise AssertionError(f"more than 10 redirects: {[h.url for h in hops]}")


def test_sso_sign_in_through_the_proxy_ends_with_an_access_token(
    sso_platform: RunningPlatform, idp: LoopbackIdP, certificates: tuple[Path, Path, Path]
) -> None:
    platform = sso_platform
    tenant = platform.create_tenant(f"sso-{uuid.uuid4().hex[:6]}")
    with platform.api() as api:
        patched = api.patch(f"/v1/tenants/{tenant['id']}", json=oidc_settings(idp.issuer))
        assert patched.status_code == 200, patched.text
    wait_operation(platform, patched.headers["location"])
    public = tenant["homeserver_url"]  # http://<server name>:<proxy port>, the public_baseurl
    upstream_port = platform.homeserver_port(tenant["id"])
    config = yaml.safe_load((platform.homeserver_dir(tenant["id"]) / "homeserver.yaml").read_text())
    assert config["ip_range_whitelist"] == ["127.0.0.1/32"]
    assert "127.0.0.0/8" in config["ip_range_blacklist"]

    prefix = f"{platform.proxy_url}/t/{tenant['slug']}"
    start = f"{prefix}/_matrix/client/v3/login/sso/redirect?" + urlencode(
        {"redirectUrl": CLIENT_REDIRECT}
    )
    hops, final = sign_in(platform, start, idp, certificates[0])
    urls = [hop.url for hop in hops]
    # /t/<slug>: one redirect to the same request on the tenant's public name (its cookies
    # belong there), then on to the IdP and back to the homeserver's callback.
    assert urls[1] == f"{public}/_matrix/client/v3/login/sso/redirect?" + urlencode(
        {"redirectUrl": CLIENT_REDIRECT}
    )
    assert urls[2].startswith(idp.issuer + "authorize?")
    assert urls[3].startswith(f"{public}/_synapse/client/oidc/callback?code=")
    assert len(hops) == 4 and final.status_code == 200, (hops, final.text[:500])
    assert all(f":{upstream_port}" not in (hop.location or "") for hop in hops)
    assert idp.seen.count("/token") == 1 and "/.well-known/openid-configuration" in idp.seen

    # Synapse asks the user to confirm handing their account to the (not allow-listed)
    # client, linking to the client's URL with the login token.
    [link] = re.findall(r'href="([^"]*loginToken=[^"]*)"', final.text)
    link = html.unescape(link)
    assert link.startswith(CLIENT_REDIRECT + "&loginToken=")
    login_token = parse_qs(urlsplit(link).query)["loginToken"][0]
    login = httpx.post(
        f"{prefix}/_matrix/client/v3/login", json={"type": "m.login.token", "token": login_token}
    )
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    whoami = httpx.get(
        f"{prefix}/_matrix/client/v3/account/whoami",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert whoami.json()["user_id"] == f"@alice:{tenant['server_name']}"


def test_an_issuer_that_now_points_inside_fails_the_reconfigure_clearly(
    sso_platform: RunningPlatform, idp: LoopbackIdP
) -> None:
    """The API refuses an internal issuer; one stored while its name still resolved publicly
    (here: written straight into the database, as a DNS change would turn it) is refused
    again when the provisioner renders the config: the reconfigure fails and says why, and
    the running homeserver keeps its last good config."""
    platform = sso_platform
    tenant = platform.create_tenant(f"ssodns-{uuid.uuid4().hex[:6]}")
    with platform.api() as api:
        refused = api.patch(
            f"/v1/tenants/{tenant['id']}", json=oidc_settings("https://169.254.169.254/")
        )
        assert refused.status_code == 422, refused.text
        assert "link-local" in refused.json()["detail"]
        patched = api.patch(f"/v1/tenants/{tenant['id']}", json=oidc_settings(idp.issuer))
        assert patched.status_code == 200, patched.text
        wait_operation(platform, patched.headers["location"])
        config_file = platform.homeserver_dir(tenant["id"]) / "homeserver.yaml"
        before = config_file.read_text()

        with psycopg.connect(
            platform.env["C3_DATABASE_URL"].replace("+psycopg", ""), autocommit=True
        ) as db:
            db.execute(
                "UPDATE tenants SET homeserver_settings = jsonb_set("
                "homeserver_settings::jsonb, '{oidc,issuer}', '\"https://10.0.0.5/realms/x\"')"
                "::json WHERE id = %s",
                (tenant["id"],),
            )
        changed = api.patch(f"/v1/tenants/{tenant['id']}", json={"registration": "token"})
        assert changed.status_code == 200, changed.text

        def finished() -> dict[str, Any] | None:
            operation = api.get(changed.headers["location"]).json()
            return operation if operation["state"] in ("failed", "succeeded") else None

        operation = poll(finished, timeout=90, what="the reconfigure to finish")
    assert operation["state"] == "failed", operation
    assert "oidc.issuer refused" in operation["last_error"]
    assert "10.0.0.5 is a private address" in operation["last_error"]
    assert config_file.read_text() == before
