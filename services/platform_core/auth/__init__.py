"""Authentication primitives (no business rules): who is calling, proven how."""

from platform_core.auth.principals import (
    ALL_SCOPES,
    TENANT_ADMIN_SCOPES,
    TENANT_KEY_SCOPES,
    Principal,
    PrincipalKind,
    Scope,
    bearer_token,
    bootstrap_operator,
)

__all__ = [
    "ALL_SCOPES",
    "TENANT_ADMIN_SCOPES",
    "TENANT_KEY_SCOPES",
    "Principal",
    "PrincipalKind",
    "Scope",
    "bearer_token",
    "bootstrap_operator",
]
