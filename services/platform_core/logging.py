"""Log lines of every C3 process, as text or JSON (``C3_LOG_FORMAT``), each carrying the id of
the request that caused it.

The id lives in a context variable: the API and the proxy set it per request (the client's
``X-Request-ID`` if sane, else a new one), Celery carries it from the enqueuing request to the
task as a message header (``platform_core.celery``), so the worker's lines of that operation
carry it too. ``json`` writes one object per line on stdout — ``ts`` (UTC, ISO 8601),
``level``, ``logger``, ``message``, ``request_id``, ``tenant_id`` when known, ``exception`` —
for a log collector; ``text`` writes human lines on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str | None] = ContextVar("c3_request_id", default=None)
tenant_id_var: ContextVar[str | None] = ContextVar("c3_tenant_id", default=None)

# What a client may choose as its request id: it ends up in log lines and response headers,
# so nothing that could break a line, a header or a JSON string.
_REQUEST_ID = r"[A-Za-z0-9._:-]{8,64}"
_SANE_REQUEST_ID = re.compile(_REQUEST_ID)
SANE_REQUEST_ID = re.compile(_REQUEST_ID.encode())  # for a raw header value (the fast lane)
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Request lines of our own HTTP clients are noise at INFO (health checks every reconcile).
_NOISY = ("httpx", "httpcore", "alembic.runtime.plugins")


_RANDOM_IDS = 256  # request ids drawn from the system at once


def request_id_from(given: str | None) -> str:
    """The client's request id if it is sane, else a new one."""
    if given and _SANE_REQUEST_ID.fullmatch(given):
        return given
    return new_request_id().decode()


class _RequestIds:
    """New request ids: 32 random hex digits each, as ``uuid4().hex``, but one ``getrandom``
    for 256 of them (this runs for every proxied request); drawn anew in a forked child.
    Made on an event loop's thread (the proxy's and the API's middleware), not shared across
    threads."""

    def __init__(self) -> None:
        self._hex = b""
        self._at = 0

    def next(self) -> bytes:
        at = self._at
        if at >= len(self._hex):
            self._hex, at = os.urandom(16 * _RANDOM_IDS).hex().encode(), 0
        self._at = at + 32
        return self._hex[at : at + 32]

    def forget(self) -> None:
        self._hex, self._at = b"", 0


_request_ids = _RequestIds()
new_request_id = _request_ids.next
os.register_at_fork(after_in_child=_request_ids.forget)


@contextmanager
def request_context(request_id: str | None, tenant_id: str | None = None) -> Iterator[None]:
    """Log lines inside the block carry ``request_id`` (and ``tenant_id``)."""
    request_token = request_id_var.set(request_id)
    tenant_token = tenant_id_var.set(tenant_id)
    try:
        yield
    finally:
        tenant_id_var.reset(tenant_token)
        request_id_var.reset(request_token)


class RequestContext(logging.Filter):
    """Stamps every record with the current request and tenant id (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.tenant_id = tenant_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        tenant_id = getattr(record, "tenant_id", None)
        if tenant_id:
            line["tenant_id"] = tenant_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        if not request_id:
            return text
        # After the first line: an exception's traceback stays below the line it belongs to.
        first, newline, rest = text.partition("\n")
        return f"{first} [request_id={request_id}]{newline}{rest}"


def configure(log_format: str) -> None:
    """Route every logger of this process through one handler in ``log_format`` (``text`` or
    ``json``); replaces handlers configured before (the process's own, not its children's)."""
    json_lines = log_format == "json"
    handler = logging.StreamHandler(sys.stdout if json_lines else sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(RequestContext())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Python warnings (deprecations, Celery's superuser warning) become log lines too, not
    # bare text in the middle of the JSON.
    logging.captureWarnings(True)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
