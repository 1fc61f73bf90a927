"""A webhook receiver on loopback for tests (a real HTTP server in a thread, recording every
request and answering as the test scripts it), and the receiver verification snippets of
docs/webhooks.md, run as written."""

from __future__ import annotations

import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from platform_core.db import task_session
from platform_core.models.webhooks import WebhookEvent
from tenant_api.webhooks import dispatch

DOCS = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered


@dataclass
class Receiver:
    """Answers each POST with ``answer(n)`` (n: how many it received before), 204 by
    default; ``hold`` (set by a test) keeps requests waiting until released."""

    answer: Callable[[int], int] = lambda n: 204
    received: list[Received] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    hold: threading.Event | None = None
    # (certificate, key) files: serve https at https://<tls_host>:<port>/hook instead.
    tls: tuple[Path, Path] | None = None
    tls_host: str = "localhost"
    # The loopback address to listen on, and its port (0: any free one).
    host: str = "127.0.0.1"
    port: int = 0
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 -- http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._lock:
                    status = receiver.answer(len(receiver.received))
                    hold = receiver.hold
                receiver.arrived.set()
                if hold is not None:
                    hold.wait(60)
                with receiver._lock:
                    receiver.received.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, body, status)
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://{self.host}:{port}/hook"
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.url = f"https://{self.tls_host}:{port}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def of_type(self, event_type: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if f'"type":"{event_type}"'.encode() in r.body]

    def wait_for(self, event_type: str, timeout: float, count: int = 1) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of_type(event_type)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {count} {event_type} message(s); "
            f"received: {[r.body[:120] for r in self.received]}"
        )


def doc_snippet(language: str) -> str:
    """The one ```language code block of docs/webhooks.md."""
    blocks = re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) == 1, f"docs/webhooks.md should have one {language} block"
    return blocks[0]


def python_verifier() -> tuple[Callable[..., None], type[Exception]]:
    """``verify_webhook`` and its error class, from the docs' Python snippet as written."""
    namespace: dict[str, Any] = {}
    exec(compile(doc_snippet("python"), str(DOCS), "exec"), namespace)  # noqa: S102
    return namespace["verify_webhook"], namespace["WebhookVerificationError"]


def fan_out_everything(now: datetime) -> None:
    """Fan out every event not yet fanned out, however many earlier tests left (one
    ``dispatch.collect`` takes at most a batch, oldest first)."""
    while True:
        dispatch.collect(now)
        with task_session() as session:
            left = session.scalar(
                select(func.count())
                .select_from(WebhookEvent)
                .where(WebhookEvent.fanned_out_at.is_(None))
            )
        if not left:
            return
