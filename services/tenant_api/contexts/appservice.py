"""The application service receiver: each tenant homeserver pushes the events of the context
rooms here (``PUT …/_matrix/app/v1/transactions/{txnId}``, authenticated by the tenant's
``hs_token``). It keeps each context's message count and last activity, marks participants
joined, and writes what happened to the outbox (``context_events``) that the webhooks will
deliver from. A transaction id applied once is acknowledged again and changes nothing.

The caller is Synapse, so answers are Matrix-shaped (``{"errcode", "error"}``)."""

from __future__ import annotations

import hmac
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header
from fastapi.responses import JSONResponse

from platform_core import appservice
from platform_core.crypto import SecretBox
from platform_core.models import Context, ContextEvent, ContextEventKind, utcnow
from platform_core.redis import async_client, keys_for
from platform_core.settings import Settings
from tenant_api.contexts.matrix import hs_token_of
from tenant_api.contexts.repository import AppserviceRepository
from tenant_api.deps import SessionDep, SettingsDep

router = APIRouter(prefix="/_c3/appservice/{tenant_id}/_matrix/app/v1", include_in_schema=False)

MAX_TXN_ID = 255


def _matrix_error(status: int, errcode: str, error: str) -> JSONResponse:
    return JSONResponse({"errcode": errcode, "error": error}, status_code=status)


async def _authorised(
    repo: AppserviceRepository, tenant_id: uuid.UUID, settings: Settings, authorization: str | None
) -> JSONResponse | str:
    """The tenant's server name if the caller proved to be its homeserver; else the answer."""
    box = SecretBox(settings.require_secret_key())
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return _matrix_error(401, "M_UNAUTHORIZED", "missing hs_token")
    found = await repo.homeserver(tenant_id)
    expected = hs_token_of(found[1], box) if found is not None else None
    if expected is None or not hmac.compare_digest(expected.encode(), token.strip().encode()):
        return _matrix_error(403, "M_FORBIDDEN", "invalid hs_token")
    return found[0].server_name  # type: ignore[index]


@router.put("/transactions/{txn_id}", name="appservice.push_transaction")
async def push_transaction(
    tenant_id: uuid.UUID,
    txn_id: str,
    session: SessionDep,
    settings: SettingsDep,
    body: Annotated[dict[str, Any], Body()],
    authorization: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    repo = AppserviceRepository(session)
    checked = await _authorised(repo, tenant_id, settings, authorization)
    if isinstance(checked, JSONResponse):
        return checked
    if len(txn_id) > MAX_TXN_ID:
        return _matrix_error(400, "M_INVALID_PARAM", "transaction id too long")
    if await repo.seen_transaction(tenant_id, txn_id):
        return JSONResponse({})
    events = [e for e in body.get("events") or [] if isinstance(e, dict)]
    contexts = await repo.contexts_by_room(
        tenant_id, {str(e.get("room_id")) for e in events if isinstance(e.get("room_id"), str)}
    )
    service_user = appservice.service_user_id(checked)
    media: dict[str, set[str]] = {}
    for event in events:
        context = contexts.get(str(event.get("room_id")))
        if context is not None:
            await _apply(repo, context, event, service_user)
            media.setdefault(context.room_id, set()).update(media_uris(event))
    await _remember_media(settings, media)
    await repo.add_transaction(tenant_id, txn_id, len(events))
    return JSONResponse({})


@router.get("/users/{user_id}", name="appservice.query_user")
async def query_user(
    tenant_id: uuid.UUID,
    user_id: str,
    session: SessionDep,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """External participants exist only once the platform registered them: none on demand."""
    checked = await _authorised(AppserviceRepository(session), tenant_id, settings, authorization)
    if isinstance(checked, JSONResponse):
        return checked
    return _matrix_error(404, "M_NOT_FOUND", "no such user")


@router.post("/ping", name="appservice.ping")
async def ping(
    tenant_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    checked = await _authorised(AppserviceRepository(session), tenant_id, settings, authorization)
    return checked if isinstance(checked, JSONResponse) else JSONResponse({})


def media_uris(event: dict[str, Any]) -> set[str]:
    """The mxc URIs an event's content points at (file, image, its thumbnail; encrypted
    attachments' ``file.url`` too)."""
    content = event.get("content")
    if not isinstance(content, dict):
        return set()
    info = content.get("info") if isinstance(content.get("info"), dict) else {}
    candidates = [
        content.get("url"),
        (content.get("file") or {}).get("url") if isinstance(content.get("file"), dict) else None,
        info.get("thumbnail_url"),  # type: ignore[union-attr]
    ]
    thumbnail_file = info.get("thumbnail_file")  # type: ignore[union-attr]
    if isinstance(thumbnail_file, dict):
        candidates.append(thumbnail_file.get("url"))
    return {c for c in candidates if isinstance(c, str) and c.startswith("mxc://")}


async def _remember_media(settings: Settings, media: dict[str, set[str]]) -> None:
    """What external participants of each room may fetch through the proxy."""
    keys = keys_for(settings)
    client = async_client(settings)
    for room_id, uris in media.items():
        if uris:
            await client.sadd(keys.context_media(room_id), *uris)


def _occurred_at(event: dict[str, Any]) -> datetime:
    ts = event.get("origin_server_ts")
    if isinstance(ts, int) and not isinstance(ts, bool) and 0 < ts < 32503680000000:
        return datetime.fromtimestamp(ts / 1000, UTC)
    return utcnow()


def _is_message(event: dict[str, Any]) -> bool:
    """A timeline event, as the proxy and the usage reconciliation count messages."""
    return "state_key" not in event and event.get("type") != "m.room.redaction"


def _joined(event: dict[str, Any], service_user: str) -> str | None:
    content = event.get("content") if isinstance(event.get("content"), dict) else {}
    if event.get("type") != "m.room.member" or content.get("membership") != "join":  # type: ignore[union-attr]
        return None
    user_id = event.get("state_key")
    return user_id if isinstance(user_id, str) and user_id != service_user else None


async def _apply(
    repo: AppserviceRepository, context: Context, event: dict[str, Any], service_user: str
) -> None:
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or await repo.outbox_has(context.tenant_id, event_id):
        return
    occurred_at = _occurred_at(event)
    payload = {
        "ref": context.ref,
        "room_id": context.room_id,
        "event_id": event_id,
        "sender": event.get("sender"),
        "type": event.get("type"),
    }
    joined = _joined(event, service_user)
    if _is_message(event):
        context.message_count += 1
        kind = ContextEventKind.MESSAGE
        payload["content"] = event.get("content") if isinstance(event.get("content"), dict) else {}
    elif joined is not None:
        participant = await repo.participant_by_user(context.id, joined)
        if participant is not None and participant.joined_at is None:
            participant.joined_at = occurred_at
        kind = ContextEventKind.PARTICIPANT_JOINED
        payload["user_id"] = joined
    else:
        return
    if context.last_activity_at is None or occurred_at > context.last_activity_at:
        context.last_activity_at = occurred_at
    await repo.add_event(
        ContextEvent(
            tenant_id=context.tenant_id,
            context_id=context.id,
            kind=kind.value,
            natural_id=event_id,
            payload=payload,
            occurred_at=occurred_at,
        )
    )
