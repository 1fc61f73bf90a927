"""Principals and bearer-token authentication.

For now one credential exists: the operator token from settings. Tenant admins and integrator
keys slot in here as further ``PrincipalKind`` values behind the same function.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum

from platform_core.errors import Unauthorized
from platform_core.settings import Settings


class PrincipalKind(StrEnum):
    OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    subject: str


def authenticate_bearer(authorization: str | None, settings: Settings) -> Principal:
    if not authorization:
        raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must use the Bearer scheme")
    expected = settings.operator_token
    if expected and hmac.compare_digest(token.strip().encode(), expected.encode()):
        return Principal(PrincipalKind.OPERATOR, "operator")
    raise Unauthorized("invalid or expired token")
