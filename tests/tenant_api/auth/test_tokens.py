"""The JWT attack suite: every forged, stale or misdirected token is refused with 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwt

from platform_core.auth.tokens import (
    ALGORITHM,
    AUDIENCE,
    ISSUER,
    _pem,
    _private_key,
    issue_access_token,
    public_key_pem,
    verify_access_token,
)
from platform_core.errors import Unauthorized
from platform_core.settings import Settings, get_settings


def b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "00000000-0000-4000-8000-0000000000aa",
        "iat": now,
        "exp": now + 600,
        "jti": "j1",
        "typ": "access",
        "role": "operator",
        "tid": None,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def signed(settings: Settings, payload: dict, *, kid: str | None = None, key=None) -> str:  # type: ignore[no-untyped-def]
    private = key or _pem(_private_key(settings.require_secret_key(), settings.jwt_key_id))
    return jwt.encode(
        payload, private, algorithm=ALGORITHM, headers={"kid": kid or settings.jwt_key_id}
    )


def forgeries(settings: Settings) -> dict[str, str]:
    good_key_public = public_key_pem(settings, settings.jwt_key_id)
    other_ec = ec.generate_private_key(ec.SECP256R1())
    other_pem = other_ec.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    return {
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': settings.jwt_key_id})}.{b64(claims())}.",
        "alg None, empty signature": f"{b64({'alg': 'None', 'kid': 'k1'})}.{b64(claims())}.",
        "HS256 signed with the public key": hs256(
            {"alg": "HS256", "typ": "JWT", "kid": settings.jwt_key_id},
            claims(),
            good_key_public.encode(),
        ),
        "RS256 with an attacker key": jwt.encode(
            claims(), rsa_pem, algorithm="RS256", headers={"kid": settings.jwt_key_id}
        ),
        "ES256 with another key": signed(settings, claims(), key=other_pem),
        "unknown kid": signed(settings, claims(), kid="k-unknown"),
        "no kid": jwt.encode(
            claims(),
            _pem(_private_key(settings.require_secret_key(), settings.jwt_key_id)),
            algorithm=ALGORITHM,
        ),
        "expired": signed(
            settings, claims(exp=int(time.time()) - 3600, iat=int(time.time()) - 4000)
        ),
        "exp missing": signed(settings, claims(exp=...)),
        "exp not a number": signed(settings, claims(exp="tomorrow")),
        "iat missing": signed(settings, claims(iat=...)),
        "issued in the future": signed(settings, claims(iat=int(time.time()) + 3600)),
        "aud missing": signed(settings, claims(aud=...)),
        "wrong aud": signed(settings, claims(aud="someone-else")),
        "iss missing": signed(settings, claims(iss=...)),
        "wrong iss": signed(settings, claims(iss="evil")),
        "sub missing": signed(settings, claims(sub=...)),
        "not an access token": signed(settings, claims(typ="refresh")),
        "typ missing": signed(settings, claims(typ=...)),
        "tampered payload": _tamper(
            signed(settings, claims(role="tenant_admin", tid="x")), claims()
        ),
        "JWE compact": "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a.b.c.d",
        "enc header": f"{b64({'alg': ALGORITHM, 'enc': 'A256GCM', 'kid': 'k1'})}.{b64(claims())}.sig",
        "embedded jwk": f"{b64({'alg': ALGORITHM, 'kid': 'k1', 'jwk': {'kty': 'EC'}})}.{b64(claims())}.sig",
        "oversized": signed(settings, claims(pad="x" * 5000)),
        "garbage": "not.a.token",
        "two segments": "abc.def",
    }


def hs256(header: dict, payload: dict, secret: bytes) -> str:
    """By hand: python-jose itself refuses an asymmetric key as an HMAC secret."""
    signing_input = f"{b64(header)}.{b64(payload)}".encode()
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{b64(signature)}"


def _tamper(token: str, new_claims: dict) -> str:
    head, _, sig = token.split(".")
    return f"{head}.{b64(new_claims)}.{sig}"


@pytest.fixture
def settings(platform_env: dict[str, str]) -> Settings:
    return get_settings()


def test_a_genuine_token_is_accepted(settings: Settings) -> None:
    token, ttl = issue_access_token(settings, subject="acct", role="operator", tenant_id=None)
    assert ttl == 900
    assert verify_access_token(token, settings).subject == "acct"


def test_every_forgery_is_refused(settings: Settings) -> None:
    accepted = []
    for name, token in forgeries(settings).items():
        try:
            verify_access_token(token, settings)
            accepted.append(name)
        except Unauthorized:
            pass
    assert accepted == []


async def test_every_forgery_gets_401_from_the_api(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    for name, token in forgeries(settings).items():
        response = await api.get("/v1/tenants", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, (name, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert token not in response.text


def test_the_previous_key_stays_valid_after_rotation_and_not_longer(settings: Settings) -> None:
    old = issue_access_token(settings, subject="a", role="operator", tenant_id=None)[0]
    rotated = settings.model_copy(update={"jwt_key_id": "k2", "jwt_previous_key_id": "k1"})
    assert verify_access_token(old, rotated).subject == "a"
    new = issue_access_token(rotated, subject="b", role="operator", tenant_id=None)[0]
    assert verify_access_token(new, rotated).subject == "b"
    retired = settings.model_copy(update={"jwt_key_id": "k2", "jwt_previous_key_id": None})
    with pytest.raises(Unauthorized):
        verify_access_token(old, retired)


@pytest.mark.parametrize("make", [lambda s: "", lambda s: "Basic abc", lambda s: "Bearer"])
async def test_missing_or_non_bearer_credentials_get_401(
    api: httpx.AsyncClient, settings: Settings, make: Callable[[Settings], str]
) -> None:
    response = await api.get("/v1/tenants", headers={"Authorization": make(settings)})
    assert response.status_code == 401
