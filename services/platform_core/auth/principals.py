"""Principals: who is calling and what they may do (scopes, tenant binding).

Credentials are checked elsewhere (``tokens`` for JWTs, ``api_keys`` for key shapes, the API's
dependency for the database lookups); this module only states the model.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from platform_core.errors import Unauthorized
from platform_core.settings import Settings


class PrincipalKind(StrEnum):
    OPERATOR = "operator"  # platform staff account, or the bootstrap operator token
    TENANT_ADMIN = "tenant_admin"  # one tenant's enterprise admin
    API_KEY = "api_key"  # an integrator key, bound to the operator org or one tenant


class Scope(StrEnum):
    TENANTS_READ = "tenants:read"
    TENANTS_WRITE = "tenants:write"
    USERS_WRITE = "users:write"
    USAGE_READ = "usage:read"
    BILLING_READ = "billing:read"
    BILLING_WRITE = "billing:write"
    PLANS_WRITE = "plans:write"
    KEYS_WRITE = "keys:write"
    AUDIT_READ = "audit:read"
    ACCOUNTS_WRITE = "accounts:write"
    # Platform metrics (GET /metrics): all a Prometheus scraper's key needs, and nothing else.
    METRICS_READ = "metrics:read"


ALL_SCOPES = frozenset(Scope)
TENANT_ADMIN_SCOPES = frozenset(
    {
        Scope.TENANTS_READ,
        Scope.TENANTS_WRITE,
        Scope.USERS_WRITE,
        Scope.USAGE_READ,
        Scope.BILLING_READ,
        Scope.KEYS_WRITE,
        Scope.AUDIT_READ,
        # Disable, enable and reset the admin accounts of their own tenant (creating accounts
        # stays with operators).
        Scope.ACCOUNTS_WRITE,
    }
)
# What a key bound to one tenant may ever hold: nothing that acts across tenants.
TENANT_KEY_SCOPES = TENANT_ADMIN_SCOPES


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    subject: str  # account id, API key id, or "bootstrap"
    tenant_id: uuid.UUID | None = None  # None: platform-wide (operators, org keys)
    scopes: frozenset[Scope] = field(default_factory=lambda: ALL_SCOPES)

    @property
    def actor(self) -> str:
        """How the audit log names this principal."""
        return f"{self.kind.value}:{self.subject}"

    @property
    def platform_wide(self) -> bool:
        return self.tenant_id is None

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes

    def sees_tenant(self, tenant_id: uuid.UUID) -> bool:
        return self.tenant_id is None or self.tenant_id == tenant_id


def bootstrap_operator(token: str, settings: Settings) -> Principal | None:
    """The operator token from settings (``c3 up`` prints it): full operator rights."""
    expected = settings.operator_token
    if expected and hmac.compare_digest(token.encode(), expected.encode()):
        return Principal(PrincipalKind.OPERATOR, "bootstrap")
    return None


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization must use the Bearer scheme")
    return token
