"""Request and response bodies of /v1/tenants/{id}/users."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from platform_core.synapse_admin import PLATFORM_ADMIN_LOCALPART

# Matrix user-id localparts as the spec asks new accounts to have them (its historical
# grammar also allowed ``/`` and more, which would steer the platform's admin API calls).
LOCALPART_RE = re.compile(r"^[a-z0-9._=\-]+$")
USER_ID_MAX = 255  # the whole user id, @localpart:server_name (checked with the tenant's)
LOCALPART_MAX = USER_ID_MAX - 3
RESERVED_LOCALPARTS = frozenset({PLATFORM_ADMIN_LOCALPART})
USERNAME_RULE = f"1-{LOCALPART_MAX} characters of a-z, 0-9 and . _ = -"


def check_username(value: str) -> str:
    """``value`` if it is a localpart C3 accepts; ValueError (a 422) otherwise."""
    if not (0 < len(value) <= LOCALPART_MAX and LOCALPART_RE.fullmatch(value)):
        raise ValueError(f"must be {USERNAME_RULE}")
    return value


class HomeserverUserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(description="Matrix localpart: a-z, 0-9 and ._=-", examples=["alice"])
    password: str = Field(min_length=8, max_length=512, repr=False)
    displayname: str | None = Field(default=None, max_length=256)
    admin: bool = Field(default=False, description="Make the user a homeserver admin")

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        check_username(value)
        if value in RESERVED_LOCALPARTS:
            raise ValueError(f"'{value}' is reserved for the platform")
        return value


class HomeserverUserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    displayname: str | None = Field(default=None, max_length=256)
    admin: bool | None = None
    password: str | None = Field(
        default=None,
        min_length=8,
        max_length=512,
        repr=False,
        description="Reset the password; the user is signed out everywhere",
    )


class HomeserverUserDeactivate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    erase: bool = Field(
        default=False,
        description="Also erase the user's messages for everyone who joins later (GDPR)",
    )


class HomeserverUserOut(BaseModel):
    user_id: str
    username: str
    displayname: str | None
    admin: bool
    deactivated: bool = False


class HomeserverUserPage(BaseModel):
    items: list[HomeserverUserOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page")
