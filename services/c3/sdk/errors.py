"""What the SDK raises: one base, the API's problem+json carried on every HTTP error."""

from __future__ import annotations

from typing import Any


class C3Error(Exception):
    """Base of everything the SDK raises."""


class ConfigurationError(C3Error):
    """No base URL or token was given (arguments or ``C3_API_URL`` / ``C3_API_TOKEN``)."""


class TransportError(C3Error):
    """The API could not be reached (connection refused, timeout), after the retries allowed."""


class ApiError(C3Error):
    """The API answered an error: ``status``, and the problem+json's ``title``, ``detail``,
    ``type`` (the whole body in ``problem``), and the request id to quote to an operator."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type: str | None = None,  # noqa: A002 -- RFC 9457's member name
        problem: dict[str, Any] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.problem = problem or {}
        self.request_id = request_id
        self.retry_after = retry_after


class BadRequestError(ApiError):
    """400."""


class AuthenticationError(ApiError):
    """401: no credential, or one the API does not accept (expired, revoked, wrong)."""


class PermissionDeniedError(ApiError):
    """403: the credential lacks the scope (or is not an operator's)."""


class NotFoundError(ApiError):
    """404: no such object, or one this credential may not see."""


class ConflictError(ApiError):
    """409: the object's state forbids it now (e.g. a tenant that has no homeserver yet)."""


class ValidationError(ApiError):
    """422: the request is malformed; ``detail`` names the field."""


class RateLimitedError(ApiError):
    """429, after the retries allowed; ``retry_after`` says when to try again."""


class ServiceUnavailableError(ApiError):
    """503, after the retries allowed (database, broker or workers unavailable)."""


class ServerError(ApiError):
    """Any other 5xx: a bug in the API; ``request_id`` finds it in the logs."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}


def error_class(status: int) -> type[ApiError]:
    return _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)


class OperationFailed(C3Error):
    """``wait_for_operation``: the operation ended ``failed``; ``operation`` holds its
    ``last_error`` and history (an operator may ``retry`` it)."""

    def __init__(self, operation: Any) -> None:
        super().__init__(
            f"operation {operation.id} ({operation.kind}) failed: {operation.last_error}"
        )
        self.operation = operation


class WaitTimeout(C3Error):
    """``wait_for_operation``: the deadline passed first; ``operation`` is the last state seen
    (it keeps running on the platform)."""

    def __init__(self, operation: Any, timeout: float) -> None:
        super().__init__(
            f"operation {operation.id} still {operation.state} after {timeout:g} s "
            f"(steps done: {', '.join(operation.steps_done) or 'none'})"
        )
        self.operation = operation


class WebhookVerificationError(C3Error):
    """``verify_webhook``: missing headers, a timestamp outside the tolerance, or no valid
    signature. Answer the delivery with 4xx and do not act on it."""
