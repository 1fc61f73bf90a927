"""Tenant homeserver settings end to end on real Synapse, through the proxy: registration by
token, TURN credentials, SSO login flows, retention, federation, the upload cap — and a settings
change that restarts the homeserver while a client keeps sending, losing nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.helpers.platform import RunningPlatform, poll, wait_operation

pytestmark = pytest.mark.e2e

TURN_SECRET = "hs-e2e-coturn-static-secret"
OIDC_SECRET = "hs-e2e-oidc-client-secret"
USER_PASSWORD = "hana-secret-12"
SIGNUP_PASSWORD = "reg-secret-123"
MIB = 1024 * 1024
SETTINGS: dict[str, Any] = {
    "registration": "token",
    "federation": {"mode": "allowlist", "allowed_servers": ["partner.c3.test"]},
    "message_retention": {"max_lifetime_days": 30},
    "max_upload_size_bytes": 5 * MIB,
    "turn": {
        "uris": ["turns:turn.c3.test:443?transport=tcp", "turn:turn.c3.test:3478"],
        "shared_secret": TURN_SECRET,
        "user_lifetime_s": 600,
    },
    "oidc": {
        "issuer": "https://login.hs-e2e.test/realms/staff",
        "client_id": "c3-hs-e2e",
        "client_secret": OIDC_SECRET,
        "display_name": "Staff SSO",
    },
}


@dataclass
class Configured:
    tenant: dict[str, Any]
    base: str  # the homeserver's base URL through the proxy
    upstream: str  # the homeserver itself (loopback), as only the platform reaches it
    token: str  # an access token of a user of the homeserver
    federation_before: int  # /_matrix/federation/v1/version status before the change

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def configured(platform: RunningPlatform) -> Configured:
    """A tenant with every homeserver setting applied (one reconfigure, one restart)."""
    tenant = platform.create_tenant("hs-settings")
    platform.create_user(tenant["id"], "hana", USER_PASSWORD)
    base = f"{platform.proxy_url}/t/{tenant['slug']}"
    upstream = f"http://127.0.0.1:{platform.homeserver_port(tenant['id'])}"
    before = httpx.get(f"{upstream}/_matrix/federation/v1/version").status_code
    with platform.api() as api:
        patched = api.patch(f"/v1/tenants/{tenant['id']}", json=SETTINGS)
        assert patched.status_code == 200, patched.text
    wait_operation(platform, patched.headers["location"])
    login = {"type": "m.login.password", "user": "hana", "password": USER_PASSWORD}
    token = httpx.post(f"{base}/_matrix/client/v3/login", json=login).json()["access_token"]
    return Configured(patched.json(), base, upstream, token, before)


def register(base: str, username: str, token: str | None) -> httpx.Response:
    """Sign up as a Matrix client does: ask for the flow, then complete its stages in order
    (the token stage with ``token``; without one, skip straight to the last stage)."""
    body: dict[str, Any] = {"username": username, "password": SIGNUP_PASSWORD}
    answer = httpx.post(f"{base}/_matrix/client/v3/register", json=body)
    if answer.status_code != 401:
        return answer
    session = answer.json()["session"]
    [flow] = answer.json()["flows"]
    stages = flow["stages"] if token else flow["stages"][1:]
    for stage in stages:
        auth = {"type": stage, "session": session}
        if stage == "m.login.registration_token":
            auth["token"] = token
        answer = httpx.post(f"{base}/_matrix/client/v3/register", json={**body, "auth": auth})
        if answer.status_code != 401:
            return answer
    return answer


def test_signing_up_needs_a_registration_token(
    platform: RunningPlatform, configured: Configured
) -> None:
    base, tokens_url = configured.base, f"/v1/tenants/{configured.tenant['id']}/registration-tokens"
    flows = httpx.post(f"{base}/_matrix/client/v3/register", json={"username": "nobody"}).json()
    assert flows["flows"] == [{"stages": ["m.login.registration_token", "m.login.dummy"]}]
    assert register(base, "no-token", None).status_code == 401
    assert register(base, "bad-token", "not-a-real-token").status_code == 401

    with platform.api() as api:
        single = api.post(tokens_url, json={"uses_allowed": 1})
        assert single.status_code == 201, single.text
        one_use = single.json()["token"]
        assert len(one_use) == 16 and single.json()["valid"] is True
        signed_up = register(base, "reg-one", one_use)
        assert signed_up.status_code == 200, signed_up.text
        assert signed_up.json()["user_id"] == f"@reg-one:{configured.tenant['server_name']}"
        assert register(base, "reg-two", one_use).status_code == 401  # used up

        unlimited = api.post(tokens_url, json={"token": "hs-e2e-team-onboarding"}).json()
        # Stays valid after this test: the log scan (test_secrets_never_logged) looks for it.
        kept = api.post(tokens_url, json={"length": 24, "uses_allowed": 5}).json()
        listed = {t["token"]: t for t in api.get(tokens_url).json()["items"]}
        assert listed[one_use]["completed"] == 1 and listed[one_use]["valid"] is False
        assert listed[unlimited["token"]]["valid"] is True and len(kept["token"]) == 24
        valid = api.get(tokens_url, params={"valid": "true"}).json()["items"]
        assert {t["token"] for t in valid} == {unlimited["token"], kept["token"]}
        taken = api.post(tokens_url, json={"token": "hs-e2e-team-onboarding"})
        assert taken.status_code == 409, taken.text

        assert api.delete(f"{tokens_url}/{unlimited['token']}").status_code == 204
        assert register(base, "reg-three", unlimited["token"]).status_code == 401
        assert api.delete(f"{tokens_url}/{unlimited['token']}").status_code == 404
        audit = api.get("/v1/audit-events", params={"tenant_id": configured.tenant["id"]})
        for token in (one_use, kept["token"], "hs-e2e-team-onboarding"):
            assert token not in audit.text
        actions = {e["action"] for e in audit.json()["items"]}
        assert {"registration_token.create", "registration_token.delete"} <= actions


def test_turn_credentials_are_time_limited_and_never_the_secret(
    configured: Configured,
) -> None:
    answer = httpx.get(
        f"{configured.base}/_matrix/client/v3/voip/turnServer", headers=configured.auth
    )
    assert answer.status_code == 200, answer.text
    turn = answer.json()
    assert turn["uris"] == SETTINGS["turn"]["uris"] and turn["ttl"] == 600
    expiry, user = turn["username"].split(":", 1)
    assert user == f"@hana:{configured.tenant['server_name']}"
    assert abs(int(expiry) - (time.time() + 600)) < 120
    # coturn's REST-API scheme: password = base64(HMAC-SHA1(shared secret, username)).
    expected = hmac.new(TURN_SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
    assert turn["password"] == base64.b64encode(expected).decode()
    assert TURN_SECRET not in answer.text


def test_clients_are_offered_single_sign_on(configured: Configured) -> None:
    flows = httpx.get(f"{configured.base}/_matrix/client/v3/login").json()["flows"]
    [sso] = [f for f in flows if f["type"] == "m.login.sso"]
    assert sso["identity_providers"] == [{"id": "oidc", "name": "Staff SSO"}]
    assert any(f["type"] == "m.login.password" for f in flows)  # accounts made by the API


def test_the_running_homeserver_enforces_retention_federation_and_upload_cap(
    platform: RunningPlatform, configured: Configured
) -> None:
    with platform.api() as api:
        settings = api.get(f"/v1/tenants/{configured.tenant['id']}").json()["settings"]
    days = settings["message_retention"]["max_lifetime_days"]  # whatever the last PATCH set
    retention = httpx.get(
        f"{configured.base}/_matrix/client/unstable/org.matrix.msc1763/retention/configuration",
        headers=configured.auth,
    )
    assert retention.status_code == 200, retention.text
    lifetime_ms = days * 86400 * 1000
    assert retention.json() == {
        "policies": {"*": {"max_lifetime": lifetime_ms}},
        "limits": {"max_lifetime": {"max": lifetime_ms}},
    }

    assert configured.federation_before == 404  # off: no server-server API at all
    version = httpx.get(f"{configured.upstream}/_matrix/federation/v1/version")
    assert version.status_code == 200 and version.json()["server"]["name"] == "Synapse"

    media = httpx.get(f"{configured.base}/_matrix/client/v1/media/config", headers=configured.auth)
    assert media.json()["m.upload.size"] == 5 * MIB
    too_big = httpx.post(
        f"{configured.base}/_matrix/media/v3/upload",
        content=b"x" * (6 * MIB),
        headers={**configured.auth, "Content-Type": "application/octet-stream"},
    )
    assert too_big.status_code == 413
    assert f"limit of {5 * MIB} bytes" in too_big.json()["error"]  # the proxy's route follows


class Chatter:
    """A Matrix client sending numbered messages with fixed txnIds, retrying the same txnId on
    502/503/429 or a dropped connection, as clients do while their homeserver restarts."""

    def __init__(self, configured: Configured, room_id: str) -> None:
        self.http = httpx.Client(base_url=configured.base, headers=configured.auth, timeout=30)
        self.room_id = room_id
        self.event_ids: dict[int, str] = {}
        self.retries = 0

    def send(self, n: int) -> None:
        url = f"/_matrix/client/v3/rooms/{self.room_id}/send/m.room.message/txn-{n}"
        body = {"msgtype": "m.text", "body": f"message {n:03d}"}
        deadline = time.monotonic() + 90
        while True:
            try:
                answer = self.http.put(url, json=body)
                if answer.status_code == 200:
                    self.event_ids[n] = answer.json()["event_id"]
                    return
                assert answer.status_code in (429, 502, 503), answer.text
                pause = min(float(answer.headers.get("retry-after", "1")), 2.0)
            except httpx.TransportError:
                pause = 0.5
            self.retries += 1
            assert time.monotonic() < deadline, f"message {n} never went through"
            time.sleep(pause)  # the client's back-off before it retries, as Retry-After asks


def test_a_settings_change_restarts_the_homeserver_without_losing_messages(
    platform: RunningPlatform, configured: Configured
) -> None:
    room = httpx.post(
        f"{configured.base}/_matrix/client/v3/createRoom",
        json={"name": "through the restart"},
        headers=configured.auth,
    ).json()["room_id"]
    chatter = Chatter(configured, room)
    for n in range(1, 11):
        chatter.send(n)
    # The PATCH happens while the client chats (a real one would not stop to wait for it).
    with platform.api() as api:
        patched = api.patch(
            f"/v1/tenants/{configured.tenant['id']}",
            json={"message_retention": {"max_lifetime_days": 14}},
        )
        assert patched.status_code == 200, patched.text
        operation_url = patched.headers["location"]

        def running() -> bool:
            return api.get(operation_url).json()["state"] in ("running", "succeeded")

        poll(running, timeout=60, what="the reconfigure to start")
    # The worker renders the config and stops the homeserver within moments of starting.
    for n in range(11, 91):
        chatter.send(n)
    wait_operation(platform, operation_url)
    for n in range(91, 101):
        chatter.send(n)
    chatter.http.close()
    assert chatter.retries > 0, "the client never saw the homeserver restart"

    history = httpx.get(
        f"{configured.base}/_matrix/client/v3/rooms/{room}/messages",
        params={"dir": "b", "limit": 500},
        headers=configured.auth,
    ).json()["chunk"]
    messages = [e for e in history if e["type"] == "m.room.message"]
    assert sorted(e["content"]["body"] for e in messages) == [
        f"message {n:03d}" for n in range(1, 101)
    ]
    assert {e["event_id"] for e in messages} == set(chatter.event_ids.values())
    retention = httpx.get(
        f"{configured.base}/_matrix/client/unstable/org.matrix.msc1763/retention/configuration",
        headers=configured.auth,
    )
    assert retention.json()["policies"]["*"]["max_lifetime"] == 14 * 86400 * 1000
