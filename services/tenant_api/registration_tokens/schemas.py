"""Request and response bodies of /v1/tenants/{id}/registration-tokens."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Synapse's alphabet for registration tokens.
TOKEN_RE = re.compile(r"^[A-Za-z0-9._~-]{8,64}$")


class RegistrationTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str | None = Field(
        default=None,
        repr=False,
        description="The token itself: 8-64 characters of A-Z, a-z, 0-9 and . _ ~ -. "
        "Omit it to get a random one (recommended).",
    )
    length: int | None = Field(
        default=None, ge=8, le=64, description="Length of the random token (default 16)"
    )
    uses_allowed: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="How many accounts may be created with it (null: unlimited)",
    )
    expires_at: datetime | None = Field(
        default=None, description="When it stops working (with a timezone); null: never"
    )

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and not TOKEN_RE.fullmatch(value):
            raise ValueError("must be 8-64 characters of A-Z, a-z, 0-9 and . _ ~ -")
        return value

    @field_validator("expires_at")
    @classmethod
    def _expires_at(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("give a timezone, e.g. 2030-01-01T00:00:00Z")
        if value <= datetime.now(UTC):
            raise ValueError("must be in the future")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _token_or_length(self) -> RegistrationTokenCreate:
        if self.token is not None and self.length is not None:
            raise ValueError("length: give either a token or the length of a random one")
        return self


class RegistrationTokenOut(BaseModel):
    """A token is a credential: hand it only to people who may create an account."""

    token: str
    uses_allowed: int | None = Field(description="null: unlimited")
    pending: int = Field(description="Sign-ups under way with this token")
    completed: int = Field(description="Accounts created with this token")
    expires_at: datetime | None
    valid: bool = Field(description="Usable now: not expired and not used up")


class RegistrationTokenList(BaseModel):
    items: list[RegistrationTokenOut]
