"""One error base for the platform; each service maps it to its wire format."""

from __future__ import annotations


class C3Error(Exception):
    status: int = 500
    title: str = "Internal error"
    type_slug: str = "internal"
    # Seconds after which retrying may succeed (sent as Retry-After), when that is known.
    retry_after: int | None = None

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if retry_after is not None:
            self.retry_after = max(1, int(retry_after))


class NotFound(C3Error):
    status = 404
    title = "Not found"
    type_slug = "not-found"


class Conflict(C3Error):
    status = 409
    title = "Conflict"
    type_slug = "conflict"


class InvalidRequest(C3Error):
    status = 422
    title = "Invalid request"
    type_slug = "invalid-request"


class Unauthorized(C3Error):
    status = 401
    title = "Unauthorized"
    type_slug = "unauthorized"


class Forbidden(C3Error):
    """Authenticated, but this principal may not do this at all (never used to hide whether
    another tenant's object exists: that is a 404)."""

    status = 403
    title = "Forbidden"
    type_slug = "forbidden"


class TooManyRequests(C3Error):
    """Over a budget or quota that frees up with time (sign-in failures, bad credentials,
    exports held); ``retry_after`` says when."""

    status = 429
    title = "Too many requests"
    type_slug = "too-many-requests"


class Busy(C3Error):
    """The service is saturated right now (e.g. every password hashing slot is taken)."""

    status = 503
    title = "Service busy"
    type_slug = "busy"
    retry_after = 1


class UpstreamError(C3Error):
    """The tenant's homeserver answered something we could not use."""

    status = 502
    title = "Homeserver error"
    type_slug = "homeserver-error"


class TemporaryError(C3Error):
    """A step failed in a way that may pass: the task retries with backoff."""

    status = 503
    title = "Temporarily unavailable"
    type_slug = "temporarily-unavailable"


class PermanentError(C3Error):
    """A step failed in a way that will not pass by retrying: the operation fails."""


class IllegalTransition(PermanentError):
    """A tenant or operation was asked to move where its lifecycle does not allow
    (``platform_core.lifecycle``): retrying cannot help."""

    status = 409
    title = "Conflict"
    type_slug = "conflict"


class Superseded(C3Error):
    """The tenant moved on (e.g. deleted while provisioning): the operation stops without
    failing its tenant."""
