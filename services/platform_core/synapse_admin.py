"""A small client for one tenant homeserver's Synapse admin API (and its health check).

Both the provisioner (shared-secret registration of the tenant admin) and the tenant API
(managing users) talk to a tenant's homeserver; this is the one place that knows the wire shape.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Self
from urllib.parse import quote

import httpx

from platform_core.errors import Conflict, InvalidRequest, TemporaryError, UpstreamError

# The platform's own admin account on every homeserver (@c3-admin:<server_name>): registered by
# the provisioner, never a tenant's user, scrubbed from exports, refused as a username.
PLATFORM_ADMIN_LOCALPART = "c3-admin"

# Given the token Synapse refused, returns one that works (see platform_core.admin_token).
TokenRenewer = Callable[[str], Awaitable[str]]


class TokenRefused(UpstreamError):
    """Synapse does not know the access token (401 / ``M_UNKNOWN_TOKEN``): logged out."""


def path_segment(value: str) -> str:
    """``value`` as exactly one path segment: every reserved character percent-encoded
    (``/`` too), and a bare ``.``/``..`` encoded so no client or server resolves it as a
    dot-segment that climbs to another admin endpoint."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in {".", ".."} else quoted


def registration_mac(
    shared_secret: str, nonce: str, username: str, password: str, admin: bool
) -> str:
    mac = hmac.new(shared_secret.encode("utf8"), digestmod=hashlib.sha1)
    for part in (nonce, username, password):
        mac.update(part.encode("utf8"))
        mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    return mac.hexdigest()


class SynapseAdminClient:
    """``renew_token``: called once per client when Synapse refuses the access token; the
    call is then retried with the token it returns."""

    def __init__(
        self,
        base_url: str,
        *,
        access_token: str | None = None,
        timeout: float = 15.0,
        renew_token: TokenRenewer | None = None,
    ):
        headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
        self._client = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)
        self._token = access_token
        self._renew_token = renew_token

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def is_healthy(self) -> bool:
        try:
            response = await self._client.get("/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def register_with_shared_secret(
        self, *, shared_secret: str, username: str, password: str, admin: bool
    ) -> dict[str, Any]:
        """Register a user with the registration shared secret; returns Synapse's answer."""
        nonce_response = await self._request("GET", "/_synapse/admin/v1/register")
        nonce = nonce_response["nonce"]
        body = {
            "nonce": nonce,
            "username": username,
            "password": password,
            "admin": admin,
            "mac": registration_mac(shared_secret, nonce, username, password, admin),
        }
        return await self._request("POST", "/_synapse/admin/v1/register", json=body)

    async def get_user(self, user_id: str) -> dict[str, Any] | None:
        try:
            return await self._request("GET", f"/_synapse/admin/v2/users/{path_segment(user_id)}")
        except UpstreamError as exc:
            if getattr(exc, "status_code", None) == 404:
                return None
            raise

    async def create_user(
        self, user_id: str, *, password: str, displayname: str | None, admin: bool = False
    ) -> dict[str, Any]:
        """Create ``user_id``; refuses (409) if it exists, so no account is silently reset."""
        if await self.get_user(user_id) is not None:
            raise Conflict(f"user {user_id} already exists on this homeserver")
        body: dict[str, Any] = {"password": password, "admin": admin}
        if displayname:
            body["displayname"] = displayname
        return await self._request(
            "PUT", f"/_synapse/admin/v2/users/{path_segment(user_id)}", json=body
        )

    async def list_users(self, *, start: int, limit: int) -> dict[str, Any]:
        """A page of local, non-guest accounts (deactivated ones included), by name."""
        params = {"from": str(start), "limit": str(limit), "guests": "false", "order_by": "name"}
        return await self._request("GET", "/_synapse/admin/v2/users", params=params)

    async def update_user(self, user_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change an existing user (the caller checked it exists: PUT would create one)."""
        return await self._request(
            "PUT", f"/_synapse/admin/v2/users/{path_segment(user_id)}", json=changes
        )

    async def deactivate_user(self, user_id: str, *, erase: bool) -> dict[str, Any]:
        return await self._request(
            "POST", f"/_synapse/admin/v1/deactivate/{path_segment(user_id)}", json={"erase": erase}
        )

    async def login_as(self, user_id: str, *, valid_until_ms: int | None) -> str:
        """An access token for ``user_id`` (no device) that the homeserver itself refuses
        after ``valid_until_ms`` (UTC epoch ms; None: until logged out)."""
        answer = await self._request(
            "POST",
            f"/_synapse/admin/v1/users/{path_segment(user_id)}/login",
            json={"valid_until_ms": valid_until_ms},
        )
        return str(answer["access_token"])

    async def list_registration_tokens(self, *, valid: bool | None = None) -> list[dict[str, Any]]:
        """All registration tokens (``valid``: only usable ones, or only used-up/expired ones)."""
        params = {} if valid is None else {"valid": "true" if valid else "false"}
        answer = await self._request("GET", _TOKENS, params=params)
        tokens = answer.get("registration_tokens", [])
        return [t for t in tokens if isinstance(t, dict)]

    async def create_registration_token(
        self,
        *,
        token: str | None,
        length: int | None,
        uses_allowed: int | None,
        expiry_time_ms: int | None,
    ) -> dict[str, Any]:
        """Create a token (``token`` as given, or one of ``length`` random characters).

        A chosen token is looked for in the list first: Synapse would refuse a duplicate with
        an error naming the token, and log it (the token only ever travels in bodies)."""
        body: dict[str, Any] = {"uses_allowed": uses_allowed, "expiry_time": expiry_time_ms}
        if token is not None:
            if any(t.get("token") == token for t in await self.list_registration_tokens()):
                raise Conflict("this registration token exists already")
            body["token"] = token
        elif length is not None:
            body["length"] = length
        return await self._request("POST", f"{_TOKENS}/new", json=body)

    async def delete_registration_token(self, token: str) -> bool:
        """Delete ``token``; False if there was no such token. (Synapse's access log shows the
        path, hence the token — one that no longer works once this succeeded.)"""
        try:
            await self._request("DELETE", _token_path(token), shown_path=_TOKEN_SHOWN)
        except UpstreamError as exc:
            if getattr(exc, "status_code", None) == 404:
                return False
            raise
        return True

    async def _request(
        self, method: str, path: str, *, shown_path: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """``shown_path``: how errors name a path that carries a credential."""
        try:
            return await self._request_once(method, path, shown_path=shown_path, **kwargs)
        except TokenRefused:
            if self._renew_token is None or self._token is None:
                raise
            renew, self._renew_token = self._renew_token, None  # once per client
            self._token = await renew(self._token)
            self._client.headers["Authorization"] = f"Bearer {self._token}"
        return await self._request_once(method, path, shown_path=shown_path, **kwargs)

    async def _request_once(
        self, method: str, path: str, *, shown_path: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        where = f"{method} {shown_path or path}"
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise TemporaryError(f"homeserver timed out on {where}") from exc
        except httpx.TransportError as exc:
            raise TemporaryError(f"homeserver unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise TemporaryError(f"homeserver answered {response.status_code} on {where}")
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        if response.status_code >= 400:
            errcode = payload.get("errcode", "") if isinstance(payload, dict) else ""
            message = payload.get("error", "") if isinstance(payload, dict) else ""
            if response.status_code == 400 and errcode in {"M_INVALID_USERNAME", "M_WEAK_PASSWORD"}:
                raise InvalidRequest(f"homeserver refused: {message or errcode}")
            if errcode == "M_USER_IN_USE":
                raise Conflict(f"homeserver refused: {message or errcode}")
            refused = response.status_code == 401 or errcode == "M_UNKNOWN_TOKEN"
            error = (TokenRefused if refused else UpstreamError)(
                f"homeserver answered {response.status_code} {errcode} on {where}"
            )
            error.status_code = response.status_code  # type: ignore[attr-defined]
            raise error
        if not isinstance(payload, dict):
            raise UpstreamError(f"homeserver answered a non-object on {where}")
        return payload


_TOKENS = "/_synapse/admin/v1/registration_tokens"
_TOKEN_SHOWN = f"{_TOKENS}/<token>"


def _token_path(token: str) -> str:
    return f"{_TOKENS}/{path_segment(token)}"


async def login_with_password(base_url: str, user_id: str, password: str) -> str:
    """Log ``user_id`` in through the client API and return a fresh access token."""
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
        "initial_device_display_name": "C3 platform",
    }
    async with httpx.AsyncClient(base_url=base_url, timeout=15.0) as client:
        try:
            response = await client.post("/_matrix/client/v3/login", json=body)
        except httpx.TransportError as exc:
            raise TemporaryError(f"homeserver unreachable: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise TemporaryError(
            f"homeserver refused the platform admin login ({response.status_code})"
        )
    token = response.json().get("access_token")
    if not isinstance(token, str):
        raise UpstreamError("homeserver login answer carried no access_token")
    return token
