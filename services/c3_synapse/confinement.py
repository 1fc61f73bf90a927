"""Confines external context participants (the platform application service's room-only
accounts) to their context room, with Synapse's spam-checker callbacks:

- no room creation (and so no direct messages to anyone outside the context), no room aliases,
  no publishing to the room directory;
- no join of any room but one they were invited to by the platform's service user, and that
  room must be a context room (``io.c3.context`` state) — public rooms included;
- no invitation of anyone, and nobody but the service user may invite them anywhere;
- user-directory search shows them nobody.

Profile lookups of others and media of other rooms have no Synapse hook; the proxy refuses
those (docs/contexts.md).
"""

from __future__ import annotations

import re
from typing import Any

from synapse.module_api import NOT_SPAM, ModuleApi, UserProfile
from synapse.module_api.errors import Codes, ConfigError


class ContextConfinement:
    def __init__(self, config: dict[str, Any], api: ModuleApi) -> None:
        self._api = api
        self._external = re.compile(config["external_user_regex"])
        self._service_user = config["service_user_id"]
        self._state_type = config["context_state_type"]
        api.register_spam_checker_callbacks(
            user_may_create_room=self.user_may_create_room,
            user_may_join_room=self.user_may_join_room,
            user_may_invite=self.user_may_invite,
            user_may_create_room_alias=self.user_may_create_room_alias,
            user_may_publish_room=self.user_may_publish_room,
            check_username_for_spam=self.check_username_for_spam,
        )

    @staticmethod
    def parse_config(config: dict[str, Any]) -> dict[str, Any]:
        for key in ("external_user_regex", "service_user_id", "context_state_type"):
            if not isinstance(config.get(key), str) or not config[key]:
                raise ConfigError(f"c3 confinement module: {key} is required")
        return config

    def _is_external(self, user_id: str) -> bool:
        return self._external.fullmatch(user_id) is not None

    async def _is_context_room(self, room_id: str) -> bool:
        state = await self._api.get_room_state(room_id, [(self._state_type, "")])
        return bool(state)

    async def _invited_by_service_user(self, user_id: str, room_id: str) -> bool:
        state = await self._api.get_room_state(room_id, [("m.room.member", user_id)])
        member = state.get(("m.room.member", user_id))
        return (
            member is not None
            and member.membership == "invite"
            and member.sender == self._service_user
        )

    async def user_may_create_room(self, user_id: str, room_config: Any = None) -> Any:
        return Codes.FORBIDDEN if self._is_external(user_id) else NOT_SPAM

    async def user_may_join_room(self, user_id: str, room_id: str, is_invited: bool) -> Any:
        if not self._is_external(user_id):
            return NOT_SPAM
        if (
            is_invited
            and await self._is_context_room(room_id)
            and await self._invited_by_service_user(user_id, room_id)
        ):
            return NOT_SPAM
        return Codes.FORBIDDEN

    async def user_may_invite(self, inviter: str, invitee: str, room_id: str) -> Any:
        if self._is_external(inviter):
            return Codes.FORBIDDEN
        if not self._is_external(invitee):
            return NOT_SPAM
        if inviter == self._service_user and await self._is_context_room(room_id):
            return NOT_SPAM
        return Codes.FORBIDDEN

    async def user_may_create_room_alias(self, user_id: str, room_alias: Any) -> Any:
        return Codes.FORBIDDEN if self._is_external(user_id) else NOT_SPAM

    async def user_may_publish_room(self, user_id: str, room_id: str) -> Any:
        return Codes.FORBIDDEN if self._is_external(user_id) else NOT_SPAM

    async def check_username_for_spam(self, profile: UserProfile, searcher: str = "") -> bool:
        """True hides ``profile`` from the search: an external participant finds nobody, and
        nobody finds an external participant through the directory."""
        return self._is_external(searcher) or self._is_external(profile["user_id"])
