"""The application service receiver: only the tenant's homeserver (its hs_token) may push, a
transaction applies once, and it keeps the context's activity, the participants' joins, the
outbox and the media its external participants may fetch."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import httpx
import redis
from sqlalchemy import select

from platform_core.db import task_session
from platform_core.models import (
    Context,
    ContextEvent,
    ContextParticipant,
)
from platform_core.redis import keys_for
from platform_core.settings import get_settings
from tests.helpers.factories import make_tenant, make_tenant_with_context

HS_TOKEN = secrets.token_urlsafe(16)


def _tenant_with_context() -> tuple[uuid.UUID, str, str]:
    """A tenant whose homeserver has the application service; its context room and the
    external participant's user id."""
    made = make_tenant_with_context(HS_TOKEN)
    return made.tenant_id, made.room_id, made.external_user_id


def _url(tenant_id: uuid.UUID, txn: str) -> str:
    return f"/_c3/appservice/{tenant_id}/_matrix/app/v1/transactions/{txn}"


def _message(room_id: str, n: int, content: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "room_id": room_id,
        "event_id": f"$m{n}-{uuid.uuid4().hex[:6]}",
        "sender": "@alice:x",
        "origin_server_ts": 1_800_000_000_000 + n,
        "content": content or {"msgtype": "m.text", "body": f"message {n}"},
    }


async def _push(api: httpx.AsyncClient, tenant_id: uuid.UUID, txn: str, events: list) -> None:
    response = await api.put(
        _url(tenant_id, txn),
        json={"events": events},
        headers={"Authorization": f"Bearer {HS_TOKEN}"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {}


async def test_only_the_tenants_homeserver_may_push(api: httpx.AsyncClient) -> None:
    tenant_id, _room, _external = _tenant_with_context()
    missing = await api.put(
        _url(tenant_id, "t1"), json={"events": []}, headers={"Authorization": ""}
    )
    assert missing.status_code == 401 and missing.json()["errcode"] == "M_UNAUTHORIZED"
    wrong = await api.put(
        _url(tenant_id, "t1"), json={"events": []}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 403 and wrong.json()["errcode"] == "M_FORBIDDEN"
    other_tenant = await api.put(
        _url(make_tenant(), "t1"),
        json={"events": []},
        headers={"Authorization": f"Bearer {HS_TOKEN}"},
    )
    assert other_tenant.status_code == 403


async def test_a_transaction_applies_once_and_keeps_the_activity(
    api: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    tenant_id, room_id, external = _tenant_with_context()
    first, second = _message(room_id, 1), _message(room_id, 2)
    joined = {
        "type": "m.room.member",
        "room_id": room_id,
        "state_key": external,
        "event_id": f"$j-{uuid.uuid4().hex[:6]}",
        "sender": external,
        "origin_server_ts": 1_800_000_000_500,
        "content": {"membership": "join"},
    }
    file = _message(room_id, 3, {"msgtype": "m.file", "body": "f", "url": "mxc://x/abc"})
    elsewhere = _message(room_id, 4) | {"room_id": "!not-a-context:x"}
    await _push(api, tenant_id, "t1", [first, joined, file, elsewhere])
    await _push(api, tenant_id, "t1", [first, joined, file, elsewhere])  # retried: no change
    await _push(api, tenant_id, "t2", [first, second])  # first again in another transaction

    with task_session() as session:
        context = session.scalars(select(Context).where(Context.tenant_id == tenant_id)).one()
        assert context.message_count == 3
        assert context.last_activity_at is not None
        assert int(context.last_activity_at.timestamp() * 1000) == 1_800_000_000_500
        participant = session.scalars(
            select(ContextParticipant).where(ContextParticipant.context_id == context.id)
        ).one()
        assert participant.joined_at is not None
        outbox = session.scalars(
            select(ContextEvent.kind).where(ContextEvent.context_id == context.id)
        ).all()
        assert sorted(outbox) == [
            "context.message",
            "context.message",
            "context.message",
            "context.participant_joined",
        ]
    media_key = keys_for(get_settings()).context_media(room_id)
    assert redis_client.smembers(media_key) == {b"mxc://x/abc"}
