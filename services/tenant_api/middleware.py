"""Pure ASGI middleware of the API: request ids, the request body limit, and
``Idempotency-Key`` on every POST.

Idempotency: the first POST with a key runs and its answer (status < 500) is stored for 24 h
under (principal, key); the same key with the same method, path and body replays that answer
without running again; with a different request it is refused (422); while the first is still
running, a repeat gets 409. A 5xx answer is not stored, so the client may retry it. Stored
answers are encrypted (Fernet under ``C3_SECRET_KEY``): some carry credentials shown once — a new
API key, a registration token, a token pair.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from platform_core.auth import bearer_token
from platform_core.crypto import SecretBox
from platform_core.db import async_sessionmaker_
from platform_core.errors import C3Error
from platform_core.logging import request_context, request_id_from
from platform_core.models import IdempotentRequest, utcnow
from platform_core.settings import get_settings
from tenant_api.idempotency.repository import IdempotencyRepository
from tenant_api.kit.problems import PROBLEM, problem_body

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]

KEY_TTL = timedelta(hours=24)
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
# The tenant a request names in its path (its log lines carry it).
_TENANT_IN_PATH = re.compile(r"^/v1/tenants/([0-9a-fA-F-]{36})(?:/|$)")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


# The database down, restarting or out of connections: answered 503, retryable.
DATABASE_UNAVAILABLE = (OperationalError, PoolTimeoutError)
UNAVAILABLE_DETAIL = "The platform database is unavailable; nothing was changed. Retry shortly."


async def _problem(
    send: Any,
    status: int,
    title: str,
    detail: str,
    *,
    type_slug: str,
    retry_after: int | None = None,
) -> None:
    body = json.dumps(problem_body(status, title, detail, type_slug=type_slug)).encode()
    headers = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _unavailable(send: Any) -> None:
    await _problem(
        send,
        503,
        "Service unavailable",
        UNAVAILABLE_DETAIL,
        type_slug="unavailable",
        retry_after=5,
    )


class RequestIdMiddleware:
    """Every request gets an id (the client's ``X-Request-ID`` if sane), echoed back, recorded
    in audit events, on every log line the request causes, and carried to the tasks it
    enqueues (``platform_core.logging``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(_header(scope, b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        tenant = _TENANT_IN_PATH.match(scope["path"])

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        with request_context(request_id, tenant[1].lower() if tenant else None):
            await self.app(scope, receive, send_with_id)


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a streamed body passes the limit. FastAPI re-raises an
    HTTPException met while reading a body (it does not turn it into its 400), so a route
    answers it through ``errors.install``; a middleware reading the body lets it pass up to
    ``BodyLimitMiddleware``."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, body_limit_detail(limit))


def body_limit_detail(limit: int) -> str:
    return f"Request bodies are limited to {limit} bytes"


def _declared_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    # llhttp admits digits only; anything else is left to the server's parser.
    if value is None or not value.isdigit():
        return None
    return int(value) if len(value) < 19 else 2**63


class BodyLimitMiddleware:
    """Request bodies larger than ``max_bytes`` are refused 413 before they are read: at once
    when ``Content-Length`` declares more, else (chunked) as soon as the bytes received pass
    the limit — ``receive`` is wrapped, so nothing inside ever holds more than the limit. The
    413 closes the connection: the rest of the body is never read."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        refused = False
        started = False

        async def send_closing(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if refused:  # uvicorn closes the connection after a response saying so
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            refused = True
            await _problem(
                send_closing,
                413,
                "Content too large",
                body_limit_detail(limit),
                type_slug="payload-too-large",
            )
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received, refused
            message: Message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, limited_receive, send_closing)
        except BodyTooLarge:
            if started:  # a response under way cannot change; the connection closes
                raise
            await _problem(
                send_closing,
                413,
                "Content too large",
                body_limit_detail(limit),
                type_slug="payload-too-large",
            )


class IdempotencyMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        key = _header(scope, b"idempotency-key") if scope["type"] == "http" else None
        if key is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if not _KEY_RE.match(key):
            await _problem(
                send,
                422,
                "Invalid request",
                "Idempotency-Key: 1-255 visible ASCII characters",
                type_slug="invalid-request",
            )
            return
        # BodyLimitMiddleware (outside) has refused larger bodies already; this is the same
        # limit, for an app built without it.
        limit = get_settings().api_max_body_bytes
        body = await _read_body(receive, limit)
        if body is None:
            await _problem(
                send,
                413,
                "Content too large",
                body_limit_detail(limit),
                type_slug="payload-too-large",
            )
            return
        try:
            owner = await _owner(scope)
        except DATABASE_UNAVAILABLE:
            await _unavailable(send)
            return
        if owner is None:  # not authenticated: the route itself answers 401
            await self.app(scope, _replay_receive(body), send)
            return
        try:
            claimed = await _claim(owner, key, _fingerprint(scope, body))
        except DATABASE_UNAVAILABLE:
            await _unavailable(send)
            return
        if isinstance(claimed, IdempotentRequest):
            await _replay(send, claimed)
            return
        if claimed is not None:
            await _refuse_claim(send, *claimed)
            return

        await _answer_recorded(self.app, scope, body, send, owner, key)


async def _answer_recorded(
    app: Any, scope: Scope, body: bytes, send: Any, owner: str, key: str
) -> None:
    """Run the request and record its answer under the key, then send it. The answer is held
    until it is recorded: a client that repeats the request the moment it has the first answer
    gets that answer replayed, not a 409 "still in progress" from a record not yet settled.
    (POST answers here are small JSON.)"""
    captured: dict[str, Any] = {"status": 500, "headers": [], "body": b""}
    held: list[Message] = []

    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            captured["status"] = message["status"]
            captured["headers"] = message.get("headers", [])
        elif message["type"] == "http.response.body":
            captured["body"] += message.get("body", b"")
        held.append(message)

    try:
        await app(scope, _replay_receive(body), capture)
    finally:
        await _settle(owner, key, captured)
    for message in held:
        await send(message)


def _fingerprint(scope: Scope, body: bytes) -> str:
    """What "the same request" means for an Idempotency-Key: method, path, query and body."""
    parts = [scope["method"].encode(), scope["path"].encode(), scope.get("query_string", b""), body]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


async def _refuse_claim(send: Any, status: int, detail: str) -> None:
    """The key is in use by a request still running (409) or by a different request (422)."""
    if status == 409:
        await _problem(send, 409, "Conflict", detail, type_slug="conflict")
    else:
        await _problem(send, status, "Invalid request", detail, type_slug="invalid-request")


async def _read_body(receive: Any, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay_receive(body: bytes) -> Any:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _owner(scope: Scope) -> str | None:
    from tenant_api.deps import authenticate  # the same credential rules as every route
    from tenant_api.throttle import Throttle

    try:
        token = bearer_token(_header(scope, b"authorization"))
        settings = get_settings()
        async with async_sessionmaker_()() as session:
            # Failures are not counted here: the route itself authenticates (and counts) next.
            principal = await authenticate(
                token, settings, session, Throttle.for_settings(settings)
            )
    except C3Error:
        return None
    return principal.actor


async def _claim(
    owner: str, key: str, fingerprint: str
) -> IdempotentRequest | tuple[int, str] | None:
    """Reserve ``key`` for this request (None), or the stored answer to replay, or an error."""
    async with async_sessionmaker_()() as session:
        stored = IdempotencyRepository(session)
        await stored.delete_older_than(utcnow() - KEY_TTL)
        await session.commit()
        for _ in range(2):
            found = await stored.get(owner, key)
            if found is not None:
                if found.fingerprint != fingerprint:
                    return (422, "Idempotency-Key was already used with a different request")
                if found.status_code is None:
                    return (409, "a request with this Idempotency-Key is still in progress")
                return found
            stored.add(IdempotentRequest(principal=owner, key=key, fingerprint=fingerprint))
            try:
                await session.commit()
                return None
            except IntegrityError:  # the same key arrived twice at once
                await session.rollback()
        return (409, "a request with this Idempotency-Key is still in progress")


async def _settle(owner: str, key: str, captured: dict[str, Any]) -> None:
    try:
        await _store_answer(owner, key, captured)
    except DATABASE_UNAVAILABLE:
        # The answer went out but is not stored: a repeat gets 409 "in progress" until the
        # key expires, never a second execution.
        log.warning("answer to an Idempotency-Key request not stored: database unavailable")


async def _store_answer(owner: str, key: str, captured: dict[str, Any]) -> None:
    async with async_sessionmaker_()() as session:
        stored = IdempotencyRepository(session)
        row = await stored.get(owner, key)
        if row is None:
            return
        if captured["status"] >= 500:
            await stored.remove(row)  # not an answer worth keeping: the client may retry
        else:
            headers = {k.lower(): v for k, v in captured["headers"]}
            row.status_code = captured["status"]
            row.content_type = (headers.get(b"content-type") or b"").decode("latin-1") or None
            row.location = (headers.get(b"location") or b"").decode("latin-1") or None
            row.body = _box().encrypt(captured["body"].decode("utf-8", errors="replace"))
        await session.commit()


def _box() -> SecretBox:
    return SecretBox(get_settings().require_secret_key())


async def _replay(send: Any, stored: IdempotentRequest) -> None:
    body = _box().decrypt(stored.body).encode() if stored.body else b""
    headers = [(b"content-length", str(len(body)).encode()), (b"idempotent-replayed", b"true")]
    if stored.content_type:
        headers.append((b"content-type", stored.content_type.encode("latin-1")))
    if stored.location:
        headers.append((b"location", stored.location.encode("latin-1")))
    await send({"type": "http.response.start", "status": stored.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
