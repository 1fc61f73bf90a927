"""End to end: contexts on a real Synapse through the real platform (`c3 up`): the back office
creates case-4711 with a tenant user and an external participant, they talk through the
proxy with matrix-nio, the confinement module refuses everything outside the context, closing
makes the room read-only and cuts the external participant off, an expired credential is
refused by the homeserver itself, and a back-office message is billed once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nio
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.helpers.environment import platform_fixture
from tests.helpers.matrix import login, usage_of
from tests.helpers.platform import RunningPlatform, poll, poll_async

pytestmark = pytest.mark.e2e

PASSWORD = "alice-secret-1"


contexts_platform = platform_fixture(
    "c3-contexts",
    "The platform with a quick expiry sweep (an expired credential's account is deactivated "
    "within a second or two).",
    C3_CONTEXTS_EXPIRY_INTERVAL_S="1",
)


def _context_url(tenant_id: str, ref: str) -> str:
    return f"/v1/tenants/{tenant_id}/contexts/{ref}"


def _external(base_url: str, credential: dict[str, Any]) -> nio.AsyncClient:
    client = nio.AsyncClient(base_url, credential["user_id"])
    client.access_token = credential["access_token"]
    client.user_id = credential["user_id"]
    return client


def _errcode(response: object) -> str | None:
    return getattr(response, "status_code", None)


async def _texts(client: nio.AsyncClient, room_id: str) -> list[str]:
    answer = await client.room_messages(room_id, start="", limit=50)
    assert isinstance(answer, nio.RoomMessagesResponse), answer
    return [
        e.body for e in answer.chunk if isinstance(e, nio.RoomMessageText | nio.RoomMessageNotice)
    ]


def _billed(platform: RunningPlatform, natural_id: str) -> int:
    url = make_url(platform.env["C3_DATABASE_URL"])
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM billable_events WHERE natural_id = :id"),
                    {"id": natural_id},
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def world(contexts_platform: RunningPlatform) -> dict[str, Any]:
    tenant = contexts_platform.create_tenant(f"ctx{uuid.uuid4().hex[:6]}")
    alice = contexts_platform.create_user(tenant["id"], "alice", PASSWORD)
    return {"tenant": tenant, "alice": alice, "base_url": tenant["homeserver_path_url"]}


@pytest.fixture
async def alice(world: dict[str, Any]) -> AsyncIterator[nio.AsyncClient]:
    client = await login(world["base_url"], world["alice"], PASSWORD)
    yield client
    await client.close()


async def test_case_4711_conversation_confinement_close_and_billing(
    contexts_platform: RunningPlatform, world: dict[str, Any], alice: nio.AsyncClient
) -> None:
    tenant_id = world["tenant"]["id"]
    api = contexts_platform.api()
    body = {"title": "Claim 4711", "participants": [{"user": "alice"}], "metadata": {"k": 1}}
    created = api.put(_context_url(tenant_id, "case-4711"), json=body)
    assert created.status_code == 201, created.text
    room_id = created.json()["room_id"]
    assert [p["user_id"] for p in created.json()["participants"]] == [world["alice"]]
    again = api.put(_context_url(tenant_id, "case-4711"), json={"title": "other"})
    assert again.status_code == 200, again.text
    assert again.json()["room_id"] == room_id  # same ref, same room
    assert again.json()["title"] == "Claim 4711"

    added = api.post(
        _context_url(tenant_id, "case-4711") + "/participants",
        json={"display_name": "Pat Patient", "ttl_s": 3600},
    )
    assert added.status_code == 201, added.text
    credential = added.json()["credential"]
    assert credential["room_id"] == room_id
    external = _external(credential["homeserver_path_url"], credential)
    try:
        # The tenant user and the external participant talk in the context room.
        assert room_id in (await alice.joined_rooms()).rooms  # type: ignore[union-attr]
        sent = await external.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "hello from the patient"}
        )
        assert isinstance(sent, nio.RoomSendResponse), sent
        reply = await alice.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "hello Pat"}
        )
        assert isinstance(reply, nio.RoomSendResponse), reply
        assert "hello from the patient" in await _texts(alice, room_id)
        assert "hello Pat" in await _texts(external, room_id)

        await _confinement_refuses(external, alice, {**world, "room_id": room_id})

        # A back-office notice: posted by the service user, billed once by its event id.
        posted = api.post(
            _context_url(tenant_id, "case-4711") + "/messages", json={"body": "document uploaded"}
        )
        assert posted.status_code == 201, posted.text
        event_id = posted.json()["event_id"]
        assert "document uploaded" in await _texts(external, room_id)
        poll(
            lambda: _billed(contexts_platform, event_id) == 1,
            timeout=30,
            what="the back-office message to be billed",
        )

        # The application service push keeps the context's activity.
        def counted() -> dict[str, Any] | None:
            context = api.get(_context_url(tenant_id, "case-4711")).json()
            return context if context["message_count"] >= 4 else None

        context = poll(counted, timeout=30, what="the appservice push to count the messages")
        assert context["last_activity_at"] is not None
        joined = {p["user_id"]: p["joined_at"] for p in context["participants"]}
        assert joined[credential["user_id"]] is not None

        # Close: read-only for everyone, the external participant cut off.
        closed = api.post(_context_url(tenant_id, "case-4711") + "/close")
        assert closed.status_code == 200, closed.text
        assert closed.json()["status"] == "closed"
        refused = await alice.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "too late"}
        )
        assert isinstance(refused, nio.RoomSendError), refused
        assert _errcode(refused) == "M_FORBIDDEN"
        cut_off = await external.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "still here?"}
        )
        assert isinstance(cut_off, nio.RoomSendError), cut_off
        assert _errcode(cut_off) == "M_UNKNOWN_TOKEN"
        assert "hello from the patient" in await _texts(alice, room_id)  # history kept
        late = api.post(_context_url(tenant_id, "case-4711") + "/messages", json={"body": "x"})
        assert late.status_code == 409, late.text
        listed = api.get(f"/v1/tenants/{tenant_id}/contexts", params={"status": "closed"})
        assert [c["ref"] for c in listed.json()["items"]] == ["case-4711"]

        # The external participant was a monthly active user like anyone else.
        poll(
            lambda: usage_of(contexts_platform, tenant_id).get("active_users", 0) >= 2,
            timeout=30,
            what="alice and the external participant to count as active users",
        )
    finally:
        await external.close()
        api.close()


async def _confinement_refuses(
    external: nio.AsyncClient, alice: nio.AsyncClient, world: dict[str, Any]
) -> None:
    """Each thing outside the context is refused with a Matrix error (the C3 module)."""
    created = await external.room_create(name="escape")
    assert isinstance(created, nio.RoomCreateError), created
    assert _errcode(created) == "M_FORBIDDEN"
    direct = await external.room_create(is_direct=True, invite=[world["alice"]])
    assert isinstance(direct, nio.RoomCreateError), direct
    assert _errcode(direct) == "M_FORBIDDEN"

    public = await alice.room_create(visibility=nio.RoomVisibility.public, name="lobby")
    assert isinstance(public, nio.RoomCreateResponse), public
    joined = await external.join(public.room_id)
    assert isinstance(joined, nio.JoinError), joined
    assert _errcode(joined) == "M_FORBIDDEN"

    private = await alice.room_create(name="elsewhere")
    assert isinstance(private, nio.RoomCreateResponse), private
    invited = await alice.room_invite(private.room_id, external.user_id)
    assert isinstance(invited, nio.RoomInviteError), invited
    assert _errcode(invited) == "M_FORBIDDEN"

    async with httpx.AsyncClient(base_url=world["base_url"], timeout=10) as http:
        search = await http.post(
            "/_matrix/client/v3/user_directory/search",
            json={"search_term": "alice"},
            headers={"Authorization": f"Bearer {external.access_token}"},
        )
    assert search.status_code == 403, search.text
    assert search.json()["errcode"] == "M_FORBIDDEN"

    # No profile lookups of others (the proxy: Synapse has no hook for it); its own is fine.
    async with httpx.AsyncClient(base_url=world["base_url"], timeout=10) as http:
        auth = {"Authorization": f"Bearer {external.access_token}"}
        other = await http.get(f"/_matrix/client/v3/profile/{world['alice']}", headers=auth)
        assert other.status_code == 403, other.text
        assert other.json()["errcode"] == "M_FORBIDDEN"
        own = await http.get(f"/_matrix/client/v3/profile/{external.user_id}", headers=auth)
        assert own.status_code == 200, own.text

    # Media of another room: refused (the proxy), while the context's own media is served.
    elsewhere_mxc = await _post_file(alice, private.room_id, b"not for the patient")
    context_mxc = await _post_file(alice, world["room_id"], b"the claim form")
    async with httpx.AsyncClient(base_url=world["base_url"], timeout=10) as http:
        auth = {"Authorization": f"Bearer {external.access_token}"}
        foreign = await http.get(_download_path(elsewhere_mxc), headers=auth)
        assert foreign.status_code == 403, foreign.text
        assert foreign.json()["errcode"] == "M_FORBIDDEN"

        async def served() -> bytes | None:
            answer = await http.get(_download_path(context_mxc), headers=auth)
            return answer.content if answer.status_code == 200 else None

        assert await poll_async(served, timeout=30, what="the context's file") == b"the claim form"


async def _post_file(client: nio.AsyncClient, room_id: str, data: bytes) -> str:
    uploaded, _ = await client.upload(
        lambda *_: data, content_type="text/plain", filesize=len(data)
    )
    assert isinstance(uploaded, nio.UploadResponse), uploaded
    sent = await client.room_send(
        room_id,
        "m.room.message",
        {"msgtype": "m.file", "body": "file.txt", "url": uploaded.content_uri},
    )
    assert isinstance(sent, nio.RoomSendResponse), sent
    return str(uploaded.content_uri)


def _download_path(mxc: str) -> str:
    server, media = mxc.removeprefix("mxc://").split("/", 1)
    return f"/_matrix/client/v1/media/download/{server}/{media}"


async def test_removing_participants_ends_their_access(
    contexts_platform: RunningPlatform, world: dict[str, Any], alice: nio.AsyncClient
) -> None:
    tenant_id = world["tenant"]["id"]
    base = _context_url(tenant_id, "case-4713")
    with contexts_platform.api() as api:
        typo = api.put(base, json={"title": "t", "participants": [{"user": "alcie"}]})
        assert typo.status_code == 422, typo.text
        assert "alcie" in typo.json()["detail"]
        assert api.get(base).status_code == 404  # nothing was created
        room_id = api.put(base, json={"title": "t"}).json()["room_id"]
        tenant_user = api.post(f"{base}/participants", json={"user": world["alice"]})
        assert tenant_user.status_code == 201, tenant_user.text
        assert tenant_user.json()["credential"] is None
        assert room_id in (await alice.joined_rooms()).rooms  # type: ignore[union-attr]
        external = api.post(f"{base}/participants", json={"display_name": "Gone soon"}).json()
        headers = {"Authorization": f"Bearer {external['credential']['access_token']}"}
        async with httpx.AsyncClient(base_url=world["base_url"], timeout=10) as http:
            works = await http.get("/_matrix/client/v3/account/whoami", headers=headers)
            assert works.status_code == 200, works.text

            for participant in (tenant_user.json(), external):
                removed = api.delete(f"{base}/participants/{participant['id']}")
                assert removed.status_code == 200, removed.text
                assert removed.json()["status"] == "removed"

            refused = await http.get("/_matrix/client/v3/account/whoami", headers=headers)
            assert refused.status_code == 401 and refused.json()["errcode"] == "M_UNKNOWN_TOKEN"
        assert room_id not in (await alice.joined_rooms()).rooms  # type: ignore[union-attr]
        again = api.delete(f"{base}/participants/{external['id']}")
        assert again.status_code == 200 and again.json()["status"] == "removed"


async def test_an_expired_credential_is_refused_by_the_homeserver(
    contexts_platform: RunningPlatform, world: dict[str, Any]
) -> None:
    tenant_id = world["tenant"]["id"]
    with contexts_platform.api() as api:
        assert api.put(_context_url(tenant_id, "case-4712"), json={"title": "t"}).status_code == 201
        added = api.post(
            _context_url(tenant_id, "case-4712") + "/participants",
            json={"display_name": "Short", "ttl_s": 3},
        )
        assert added.status_code == 201, added.text
        participant_id = added.json()["id"]
        credential = added.json()["credential"]

        async with httpx.AsyncClient(base_url=credential["homeserver_path_url"]) as http:
            headers = {"Authorization": f"Bearer {credential['access_token']}"}
            first = await http.get("/_matrix/client/v3/account/whoami", headers=headers)
            assert first.status_code == 200, first.text

            async def refused() -> dict[str, Any] | None:
                answer = await http.get("/_matrix/client/v3/account/whoami", headers=headers)
                return answer.json() if answer.status_code == 401 else None

            error = await poll_async(refused, timeout=30, what="the homeserver to refuse it")
            assert error["errcode"] == "M_UNKNOWN_TOKEN"

        def expired() -> dict[str, Any] | None:
            context = api.get(_context_url(tenant_id, "case-4712")).json()
            mine = [p for p in context["participants"] if p["id"] == participant_id]
            return mine[0] if mine and mine[0]["status"] == "expired" else None

        poll(expired, timeout=30, what="the sweep to deactivate the expired participant")
        async with httpx.AsyncClient(base_url=contexts_platform.api_url, timeout=10) as anonymous:
            # The appservice receiver does not take a wrong hs_token.
            wrong = await anonymous.put(
                f"/_c3/appservice/{tenant_id}/_matrix/app/v1/transactions/t1",
                json={"events": []},
                headers={"Authorization": "Bearer nope"},
            )
            assert wrong.status_code == 403
            assert wrong.json()["errcode"] == "M_FORBIDDEN"
