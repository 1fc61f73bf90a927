"""Request and response bodies of /v1/tenants/{id}/contexts."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

REF_RE = re.compile(r"^[A-Za-z0-9._:~\-]{1,200}$")
REF_RULE = "1-200 characters of A-Z, a-z, 0-9 and . _ : ~ -"
MAX_METADATA_BYTES = 8 * 1024


def check_ref(value: str) -> str:
    """``value`` if it is a context reference C3 accepts; ValueError (a 422) otherwise."""
    if not REF_RE.fullmatch(value):
        raise ValueError(f"must be {REF_RULE}")
    return value


class ParticipantIn(BaseModel):
    """A tenant user (``user``: a username or a full user id of the tenant's homeserver) or
    an external participant (``display_name`` and optionally ``ttl_s``)."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(
        default=None, max_length=255, description="Tenant user: alice or @alice:server"
    )
    display_name: str | None = Field(
        default=None, min_length=1, max_length=256, description="External participant's name"
    )
    ttl_s: int | None = Field(
        default=None,
        ge=1,
        description="External participant: seconds the credential lives (capped by the"
        " platform's C3_CONTEXTS_EXTERNAL_TTL_MAX_S)",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ParticipantIn:
        if (self.user is None) == (self.display_name is None):
            raise ValueError("give either user (a tenant user) or display_name (an external)")
        if self.user is not None and self.ttl_s is not None:
            raise ValueError("ttl_s is for external participants only")
        return self


class TenantUserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(max_length=255, description="alice or @alice:server")


class ContextPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=300)
    participants: list[TenantUserIn] = Field(
        default_factory=list,
        max_length=50,
        description="Tenant users to invite and join when the context is created (external"
        " participants are added with POST …/participants, which returns their credential)",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _small_metadata(self) -> ContextPut:

        if len(json.dumps(self.metadata)) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata: at most {MAX_METADATA_BYTES} bytes of JSON")
        return self


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body: str = Field(min_length=1, max_length=16_000)


class ParticipantOut(BaseModel):
    id: uuid.UUID
    kind: Literal["tenant_user", "external"]
    user_id: str
    display_name: str | None
    status: Literal["active", "removed", "expired", "closed"]
    expires_at: datetime | None
    joined_at: datetime | None


class Credential(BaseModel):
    """What an SDK or the widget needs to join the conversation at once. Shown once."""

    access_token: str
    user_id: str
    device_id: str | None
    homeserver_url: str = Field(description="The tenant's homeserver through the C3 proxy")
    homeserver_path_url: str = Field(
        description="The same homeserver by path (…/t/{slug}), for single-domain setups"
    )
    room_id: str
    expires_at: datetime


class ParticipantCreated(ParticipantOut):
    credential: Credential | None = Field(
        default=None, description="External participants only; never shown again"
    )


class ContextOut(BaseModel):
    id: uuid.UUID
    ref: str
    title: str
    metadata: dict[str, Any]
    room_id: str
    status: Literal["open", "closed"]
    message_count: int
    last_activity_at: datetime | None
    created_at: datetime
    closed_at: datetime | None
    participants: list[ParticipantOut]


class ContextPage(BaseModel):
    items: list[ContextOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page")


class MessageOut(BaseModel):
    event_id: str
    room_id: str
