"""External context participants, confined where Synapse has no module hook: they may look up
no profile but their own, and fetch no media but that posted in their context room.

Only profile and media requests are looked at. An external participant's credential is known
by its SHA-256 in Redis (``<user id> <room id>``, written by the tenant API when it made the
credential, expiring with it), so telling one apart costs one Redis GET and no call to the
homeserver. The media posted in each context room are a Redis set kept by the tenant API's
application service receiver (``platform_core.redis.RedisKeys``).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import redis.asyncio as aioredis

from homeserver_proxy import errors
from homeserver_proxy.asgi import Scope
from homeserver_proxy.identity import access_token
from platform_core import appservice
from platform_core.redis import RedisKeys

_PROFILE = re.compile(r"^/_matrix/client/(?:r0|v3|unstable)/profile/(?P<user>[^/]+)")
_MEDIA = re.compile(
    r"^/_matrix/(?:media/(?:r0|v3|v1)|client/v1/media)/(?:download|thumbnail)/"
    r"(?P<server>[^/]+)/(?P<media>[^/]+)"
)


def _forbidden(what: str) -> errors.MatrixError:
    return errors.MatrixError(403, "M_FORBIDDEN", f"External participants cannot {what}")


class Confinement:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

    async def check(self, scope: Scope, path: str) -> None:
        """Raises ``MatrixError`` (403) if an external participant asks for what it may not."""
        if scope["method"] not in ("GET", "HEAD") or not ("/profile/" in path or "/media/" in path):
            return
        profile, media = _PROFILE.match(path), _MEDIA.match(path)
        if profile is None and media is None:
            return
        token = access_token(scope)
        if token is None:
            return
        found = await self._redis.get(self._keys.context_external(appservice.token_digest(token)))
        if found is None:
            return  # not an external participant's credential
        user_id, _, room_id = (found.decode() if isinstance(found, bytes) else found).partition(" ")
        if profile is not None and unquote(profile["user"]) != user_id:
            raise _forbidden("look up the profiles of other users")
        if media is not None:
            mxc = f"mxc://{unquote(media['server'])}/{unquote(media['media'])}"
            if not await self._redis.sismember(self._keys.context_media(room_id), mxc):
                raise _forbidden("fetch media from outside their context")
