"""A stand-in homeserver for the fake backend (``provisioner.backends.fake``).

It answers what the platform itself asks of a tenant's Synapse — ``/health``, shared-secret
admin registration (nonce + HMAC, ``M_USER_IN_USE`` on a second registration, as Synapse),
password login, ``whoami`` and ``/versions`` — so many tenants can be provisioned cheaply and
with fault injection. It is not a Matrix server.

Run as ``python -m provisioner.fake_homeserver <data dir>/fake-homeserver.json``. It keeps its
accounts in ``accounts.json`` beside the config (password hashes, token digests) and appends
every successful shared-secret registration to ``registrations.jsonl``, so tests can count
them per tenant.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sys
import threading
import time
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from platform_core.private_files import write_private
from platform_core.synapse_admin import registration_mac

REGISTRATIONS = "registrations.jsonl"
ACCOUNTS = "accounts.json"
_NONCE_TIMEOUT_S = 60.0  # as Synapse's UserRegisterServlet
_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+$")
_PBKDF2_ROUNDS = 20_000


class MatrixError(Exception):
    def __init__(self, status: HTTPStatus, errcode: str, error: str) -> None:
        super().__init__(error)
        self.status, self.errcode, self.error = status, errcode, error


class FakeHomeserver:
    """Accounts, tokens and registration nonces of one stand-in homeserver (thread-safe)."""

    def __init__(self, directory: Path, server_name: str, shared_secret: str) -> None:
        self.directory = directory
        self.server_name = server_name
        self.shared_secret = shared_secret
        self._lock = threading.Lock()
        self._nonces: dict[str, float] = {}
        path = directory / ACCOUNTS
        saved = json.loads(path.read_text()) if path.exists() else {}
        self._users: dict[str, dict[str, Any]] = saved.get("users", {})
        self._tokens: dict[str, str] = saved.get("tokens", {})

    # Admin registration --------------------------------------------------------------

    def new_nonce(self) -> str:
        nonce = secrets.token_hex(64)
        with self._lock:
            now = time.monotonic()
            self._nonces = {n: t for n, t in self._nonces.items() if now - t < _NONCE_TIMEOUT_S}
            self._nonces[nonce] = now
        return nonce

    def register(self, body: dict[str, Any]) -> dict[str, Any]:
        """Synapse's checks, in Synapse's order: nonce (used up even when the rest is
        wrong), username, password, MAC, then whether the user exists."""
        nonce = body.get("nonce")
        if not isinstance(nonce, str):
            raise MatrixError(HTTPStatus.BAD_REQUEST, "M_BAD_JSON", "nonce must be specified")
        with self._lock:
            if self._nonces.pop(nonce, None) is None:
                raise MatrixError(HTTPStatus.BAD_REQUEST, "M_UNKNOWN", "unrecognised nonce")
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not _LOCALPART.match(username):
            raise MatrixError(HTTPStatus.BAD_REQUEST, "M_INVALID_USERNAME", "Invalid username")
        if not isinstance(password, str) or not password or len(password) > 512:
            raise MatrixError(HTTPStatus.BAD_REQUEST, "M_UNKNOWN", "Invalid password")
        admin = bool(body.get("admin", False))
        want = registration_mac(self.shared_secret, nonce, username, password, admin)
        if not hmac.compare_digest(want, str(body.get("mac", ""))):
            raise MatrixError(HTTPStatus.FORBIDDEN, "M_FORBIDDEN", "HMAC incorrect")
        user_id = f"@{username}:{self.server_name}"
        salt = secrets.token_hex(16)
        with self._lock:
            if user_id in self._users:
                raise MatrixError(HTTPStatus.BAD_REQUEST, "M_USER_IN_USE", "User ID already taken.")
            self._users[user_id] = {"salt": salt, "hash": _hash(password, salt), "admin": admin}
            token = self._issue_token(user_id)
            self._save()
            record = {"at": datetime.now(UTC).isoformat(), "user_id": user_id, "admin": admin}
            with open(self.directory / REGISTRATIONS, "a") as log:
                log.write(json.dumps(record) + "\n")
        return self._session(user_id, token)

    # Client API ----------------------------------------------------------------------

    def login(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("type") != "m.login.password":
            raise MatrixError(HTTPStatus.BAD_REQUEST, "M_UNKNOWN", "Unknown login type")
        identifier = body.get("identifier") or {"type": "m.id.user", "user": body.get("user")}
        user = identifier.get("user") if isinstance(identifier, dict) else None
        password = body.get("password")
        if not isinstance(user, str) or not isinstance(password, str):
            raise MatrixError(HTTPStatus.BAD_REQUEST, "M_BAD_JSON", "user and password needed")
        user_id = user if user.startswith("@") else f"@{user}:{self.server_name}"
        with self._lock:
            account = self._users.get(user_id)
            if account is None or not hmac.compare_digest(
                account["hash"], _hash(password, account["salt"])
            ):
                raise MatrixError(
                    HTTPStatus.FORBIDDEN, "M_FORBIDDEN", "Invalid username or password"
                )
            token = self._issue_token(user_id)
            self._save()
        return self._session(user_id, token)

    def whoami(self, authorization: str | None) -> dict[str, Any]:
        if not authorization or not authorization.startswith("Bearer "):
            raise MatrixError(HTTPStatus.UNAUTHORIZED, "M_MISSING_TOKEN", "Missing access token")
        with self._lock:
            user_id = self._tokens.get(_digest(authorization.removeprefix("Bearer ")))
        if user_id is None:
            raise MatrixError(
                HTTPStatus.UNAUTHORIZED, "M_UNKNOWN_TOKEN", "Unrecognised access token"
            )
        return {"user_id": user_id, "is_guest": False}

    # Internals -----------------------------------------------------------------------

    def _issue_token(self, user_id: str) -> str:
        token = "fake_" + secrets.token_urlsafe(24)
        self._tokens[_digest(token)] = user_id
        return token

    def _session(self, user_id: str, token: str) -> dict[str, Any]:
        return {
            "user_id": user_id,
            "access_token": token,
            "home_server": self.server_name,
            "device_id": secrets.token_hex(5).upper(),
        }

    def _save(self) -> None:
        """Atomically, so a homeserver stopped at any moment restarts with its accounts."""
        write_private(
            self.directory / ACCOUNTS, json.dumps({"users": self._users, "tokens": self._tokens})
        )


def _hash(password: str, salt: str) -> str:
    return hashlib.pbkdf2_hmac(
        "sha256", password.encode(), bytes.fromhex(salt), _PBKDF2_ROUNDS
    ).hex()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], homeserver: FakeHomeserver) -> None:
        super().__init__(address, _Handler)
        self.homeserver = homeserver


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 — http.server's naming
        homeserver = self.server.homeserver
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(HTTPStatus.OK, None, text="OK")
        elif path == "/_matrix/client/versions":
            self._send(HTTPStatus.OK, {"versions": ["v1.1", "v1.11"], "unstable_features": {}})
        elif path == "/_synapse/admin/v1/register":
            self._send(HTTPStatus.OK, {"nonce": homeserver.new_nonce()})
        elif path == "/_matrix/client/v3/account/whoami":
            self._answer(lambda: homeserver.whoami(self.headers.get("Authorization")))
        else:
            self._unrecognized()

    def do_POST(self) -> None:  # noqa: N802 — http.server's naming
        homeserver = self.server.homeserver
        path = self.path.split("?", 1)[0]
        if path == "/_synapse/admin/v1/register":
            self._answer(lambda: homeserver.register(self._json()))
        elif path == "/_matrix/client/v3/login":
            self._answer(lambda: homeserver.login(self._json()))
        else:
            self._unrecognized()

    def _json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            raise MatrixError(HTTPStatus.BAD_REQUEST, "M_NOT_JSON", "Content not JSON.") from None
        if not isinstance(body, dict):
            raise MatrixError(HTTPStatus.BAD_REQUEST, "M_BAD_JSON", "Body must be an object")
        return body

    def _answer(self, produce: Any) -> None:
        try:
            payload = produce()
        except MatrixError as exc:
            self._send(exc.status, {"errcode": exc.errcode, "error": exc.error})
            return
        self._send(HTTPStatus.OK, payload)

    def _unrecognized(self) -> None:
        self._send(HTTPStatus.NOT_FOUND, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized"})

    def _send(self, status: HTTPStatus, payload: dict[str, Any] | None, *, text: str = "") -> None:
        body = json.dumps(payload).encode() if payload is not None else text.encode()
        self.send_response(status)
        content_type = "application/json" if payload is not None else "text/plain"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 — base signature
        """Quiet: the platform polls /health many times a second while it waits."""


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m provisioner.fake_homeserver <fake-homeserver.json>")
        return 2
    config_path = Path(argv[1])
    config = json.loads(config_path.read_text())
    # A real homeserver takes a while before it answers; crash tests need that window.
    time.sleep(float(config.get("boot_s", 0.0)))
    homeserver = FakeHomeserver(
        config_path.parent, config["server_name"], config["registration_shared_secret"]
    )
    server = _Server((config["bind"], int(config["port"])), homeserver)
    print(f"fake homeserver {config['server_name']} on {config['bind']}:{config['port']}")
    sys.stdout.flush()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
