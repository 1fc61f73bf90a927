"""What the sync and the async client share: configuration, the calls (method, path, body, how
to read the answer), the retry policy and reading problem+json into typed errors. The clients
only move bytes."""

from __future__ import annotations

import email.utils
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from c3.sdk.errors import ApiError, ConfigurationError, error_class

T = TypeVar("T")

ENV_URL = "C3_API_URL"
ENV_TOKEN = "C3_API_TOKEN"
RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of 429 and 503 answers (and, for requests safe to repeat, of failed
    connections): at most ``max_retries`` more attempts, each after the answer's
    ``Retry-After`` — or, without one, a jittered backoff from ``backoff_s`` doubling up to
    ``max_backoff_s``. A ``Retry-After`` longer than ``max_retry_after_s`` is not waited
    for: the error is raised at once with ``retry_after`` set."""

    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1-based), or None: do not."""
        if attempt > self.max_retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after_s else None
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return backoff * (0.5 + random.random() / 2)  # noqa: S311 -- jitter, not secrecy


NO_RETRIES = RetryPolicy(max_retries=0)


def retry_after_of(response: httpx.Response, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class Config:
    base_url: str
    token: str
    timeout: float
    retry: RetryPolicy
    user_agent: str

    @classmethod
    def resolve(
        cls,
        base_url: str | None,
        token: str | None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Config:
        env = os.environ if env is None else env
        url = base_url or env.get(ENV_URL)
        secret = token or env.get(ENV_TOKEN)
        if not url:
            raise ConfigurationError(f"no API URL: pass base_url= or set {ENV_URL}")
        if not secret:
            raise ConfigurationError(f"no API token: pass token= or set {ENV_TOKEN}")
        return cls(url.rstrip("/"), secret, timeout, retry or RetryPolicy(), _user_agent())


def _user_agent() -> str:
    from importlib import metadata

    try:
        return f"c3-sdk/{metadata.version('c3')}"
    except metadata.PackageNotFoundError:
        return "c3-sdk"


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to read its answer. A POST carries an ``Idempotency-Key``
    (the caller's, or a fresh one) that stays the same across retries, so a retried create
    makes one tenant, not two."""

    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, Any] | None = None
    json: Any = None
    idempotency_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def request_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.method == "POST":
            headers["Idempotency-Key"] = self.idempotency_key or f"c3sdk-{uuid.uuid4()}"
        return headers

    @property
    def repeatable(self) -> bool:
        """Safe to send again after a failed connection: reads, and POSTs (their
        Idempotency-Key makes a repeat replay the first answer)."""
        return self.method in ("GET", "HEAD", "PUT", "DELETE", "POST")


def clean(params: Mapping[str, Any]) -> dict[str, Any]:
    """Query parameters without the ones left unset."""
    return {k: v for k, v in params.items() if v is not None}


def raise_for_problem(response: httpx.Response) -> None:
    """Raise the typed ``ApiError`` for an error answer, carrying its problem+json."""
    if response.status_code < 400:
        return
    problem: dict[str, Any] = {}
    try:
        body = response.json()
        if isinstance(body, dict):
            problem = body
    except ValueError:
        pass
    title = str(problem.get("title") or response.reason_phrase or "Error")
    detail = problem.get("detail")
    if not isinstance(detail, str):
        detail = str(detail) if detail is not None else response.text[:500]
    raise error_class(response.status_code)(
        response.status_code,
        title,
        detail,
        type=problem.get("type"),
        problem=problem,
        request_id=response.headers.get("x-request-id"),
        retry_after=retry_after_of(response),
    )


def read(call: Call[T], response: httpx.Response) -> T:
    raise_for_problem(response)
    return call.parse(response.json() if response.content else None)


def wants_retry(response: httpx.Response) -> bool:
    return response.status_code in RETRY_STATUSES


__all__ = ["ApiError", "Call", "Config", "RetryPolicy", "T"]
