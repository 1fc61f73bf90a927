"""JWT access tokens: python-jose behind ONE verification function.

python-jose alone trusts too much (with ``algorithms=None`` it takes the header's word; a
missing ``aud`` passes). ``verify_access_token`` therefore pins ES256, refuses ``none``, JWE
and oversized tokens, requires a known ``kid`` and the claims ``exp``, ``iat``, ``iss``,
``aud``, ``sub`` and ``typ``. Signing keys are P-256 keys derived from ``C3_SECRET_KEY`` and a
key id: rotating means setting a new ``C3_JWT_KEY_ID`` and the old one as
``C3_JWT_PREVIOUS_KEY_ID`` for one token lifetime.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from base64 import urlsafe_b64decode
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jose import jwt
from jose.exceptions import JOSEError

from platform_core.errors import Unauthorized
from platform_core.settings import Settings

ALGORITHM = "ES256"
ISSUER = "c3"
AUDIENCE = "c3-api"
ACCESS_TOKEN_TYPE = "access"
MAX_TOKEN_BYTES = 4096
_P256_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)


@dataclass(frozen=True)
class AccessClaims:
    subject: str  # account id
    role: str
    tenant_id: str | None
    expires_at: int
    token_id: str
    # Millisecond issue time: compared with an account's sessions-revoked mark (disable,
    # password reset), where whole seconds could not tell "just before" from "just after".
    issued_at_ms: int


@lru_cache(maxsize=8)
def _private_key(secret_key: str, kid: str) -> ec.EllipticCurvePrivateKey:
    material = HKDF(
        algorithm=SHA256(), length=48, salt=b"c3-jwt-signing", info=kid.encode()
    ).derive(secret_key.encode())
    scalar = int.from_bytes(material, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_key_pem(settings: Settings, kid: str) -> str:
    key = _private_key(settings.require_secret_key(), kid).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def issue_access_token(
    settings: Settings, *, subject: str, role: str, tenant_id: str | None, now: float | None = None
) -> tuple[str, int]:
    """A signed access token and its lifetime in seconds."""
    issued_precise = time.time() if now is None else now
    issued = int(issued_precise)
    ttl = settings.access_token_ttl_s
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": issued,
        "iat_ms": int(issued_precise * 1000),
        "nbf": issued,
        "exp": issued + ttl,
        "jti": uuid.uuid4().hex,
        "typ": ACCESS_TOKEN_TYPE,
        "role": role,
        "tid": tenant_id,
    }
    key = _pem(_private_key(settings.require_secret_key(), settings.jwt_key_id))
    token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": settings.jwt_key_id})
    return token, ttl


def _header(token: str) -> dict[str, Any]:
    head = token.split(".", 1)[0]
    try:
        decoded = json.loads(urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise Unauthorized("malformed token") from None
    if not isinstance(decoded, dict):
        raise Unauthorized("malformed token")
    return decoded


def verify_access_token(token: str, settings: Settings) -> AccessClaims:
    """The only way a JWT is accepted anywhere in C3. Any doubt → ``Unauthorized``."""
    kid = _checked_header_kid(token, settings)
    try:
        claims = jwt.decode(
            token,
            public_key_pem(settings, kid),
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={
                "require_exp": True,
                "require_iat": True,
                "require_aud": True,
                "require_iss": True,
                "require_sub": True,
                "require_jti": True,
                "leeway": 30,
            },
        )
    except JOSEError:
        raise Unauthorized("invalid or expired token") from None
    return _access_claims(claims)


def _checked_header_kid(token: str, settings: Settings) -> str:
    """Refuse, before any signature work, what is not a compact ES256 JWS signed by one of our
    keys (``alg: none``, HS256 with the public key, JWE, embedded or remote keys); returns the
    key id."""
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthorized("token too large")
    if token.count(".") != 2:  # JWE compact has 4 dots; anything else is not a JWS
        raise Unauthorized("malformed token")
    header = _header(token)
    if header.get("alg") != ALGORITHM or "enc" in header or "crit" in header:
        raise Unauthorized("token algorithm not accepted")
    if header.get("jku") or header.get("jwk") or header.get("x5u") or header.get("x5c"):
        raise Unauthorized("token names its own key")
    kid = header.get("kid")
    known = {settings.jwt_key_id} | (
        {settings.jwt_previous_key_id} if settings.jwt_previous_key_id else set()
    )
    if not isinstance(kid, str) or kid not in known:
        raise Unauthorized("token signed with an unknown key")
    return kid


def _access_claims(claims: dict[str, Any]) -> AccessClaims:
    """The claims of a verified token, if they are those of a C3 access token."""
    if claims.get("typ") != ACCESS_TOKEN_TYPE or claims.get("aud") != AUDIENCE:
        raise Unauthorized("not an access token")
    for name in ("exp", "iat"):
        if not isinstance(claims.get(name), int):
            raise Unauthorized(f"token claim {name} is not a timestamp")
    if claims["iat"] > time.time() + 30:
        raise Unauthorized("token issued in the future")
    role, tenant = claims.get("role"), claims.get("tid")
    if not isinstance(role, str) or not isinstance(claims.get("sub"), str):
        raise Unauthorized("token claims are malformed")
    if tenant is not None and not isinstance(tenant, str):
        raise Unauthorized("token claims are malformed")
    issued_ms = claims.get("iat_ms")
    if not isinstance(issued_ms, int):
        issued_ms = claims["iat"] * 1000
    return AccessClaims(claims["sub"], role, tenant, claims["exp"], str(claims["jti"]), issued_ms)


def token_digest(secret_key: str, value: str) -> str:
    """Keyed hash of an opaque token (refresh tokens, API key secrets) for storage."""
    return hashlib.blake2b(
        value.encode(), key=hashlib.sha256(secret_key.encode()).digest(), digest_size=32
    ).hexdigest()
