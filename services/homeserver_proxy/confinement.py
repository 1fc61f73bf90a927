"""External context participants, confined where Synapse has no module hook: they may look up
no profile but their own, and fetch no media but that posted in their context room.

Who an access token belongs to comes from the identity cache, or one ``whoami`` the first
time a token asks for a profile or media (then cached). Only those two kinds of request are
looked at, so no other request pays for this. The room of each external participant and the
media posted in context rooms are in Redis (``platform_core.redis.RedisKeys``), written by
the tenant API when it creates the participant and by its application service receiver.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

import redis.asyncio as aioredis

from homeserver_proxy import errors
from homeserver_proxy.asgi import Scope
from homeserver_proxy.identity import TokenUsers, access_token
from platform_core import appservice
from platform_core.redis import RedisKeys
from platform_core.routes import Route

_PROFILE = re.compile(r"^/_matrix/client/(?:r0|v3|unstable)/profile/(?P<user>[^/]+)")
_MEDIA = re.compile(
    r"^/_matrix/(?:media/(?:r0|v3|v1)|client/v1/media)/(?:download|thumbnail)/"
    r"(?P<server>[^/]+)/(?P<media>[^/?]+)"
)

Resolve = Callable[[str, str], Awaitable[str | None]]  # (upstream, token) -> user id


def _forbidden(what: str) -> errors.MatrixError:
    return errors.MatrixError(403, "M_FORBIDDEN", f"External participants cannot {what}")


class Confinement:
    def __init__(
        self, redis: aioredis.Redis, keys: RedisKeys, users: TokenUsers, resolve: Resolve
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._users = users
        self._resolve = resolve

    async def check(self, route: Route, scope: Scope, path: str) -> None:
        """Raises ``MatrixError`` (403) if an external participant asks for what it may not."""
        if scope["method"] not in ("GET", "HEAD") or not ("/profile/" in path or "/media/" in path):
            return
        profile, media = _PROFILE.match(path), _MEDIA.match(path)
        if profile is None and media is None:
            return
        user = await self._user(route, scope)
        if user is None or not appservice.is_external_user(user, route.server_name):
            return
        if profile is not None and unquote(profile["user"]) != user:
            raise _forbidden("look up the profiles of other users")
        if media is not None:
            mxc = f"mxc://{unquote(media['server'])}/{unquote(media['media'])}"
            room = await self._redis.get(self._keys.context_external(user))
            room_id = room.decode() if isinstance(room, bytes) else room
            if room_id is None or not await self._redis.sismember(
                self._keys.context_media(room_id), mxc
            ):
                raise _forbidden("fetch media from outside their context")

    async def _user(self, route: Route, scope: Scope) -> str | None:
        token = access_token(scope)
        if token is None:
            return None
        user = self._users.get(route.tenant_id, token)
        if user is None:
            user = await self._resolve(route.upstream, token)
            if user is not None:
                self._users.remember(route.tenant_id, token, user)
        return user
