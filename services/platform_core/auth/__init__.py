"""Authentication primitives (no business rules): who is calling, proven how."""

from platform_core.auth.principals import Principal, PrincipalKind, authenticate_bearer

__all__ = ["Principal", "PrincipalKind", "authenticate_bearer"]
