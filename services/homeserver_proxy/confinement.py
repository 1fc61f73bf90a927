"""External context participants, confined where Synapse has no module hook: they may look up
no profile but their own, fetch no media but that posted in their context room, and search
no user directory (the C3 Synapse module empties their results; here they get an error).

Only profile, media and directory-search requests are looked at. An external participant's credential is known
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
_DIRECTORY = re.compile(r"^/_matrix/client/(?:r0|v3|unstable)/user_directory/search$")
_MEDIA = re.compile(
    r"^/_matrix/(?:media/(?:r0|v3|v1)|client/v1/media)/(?:download|thumbnail)/"
    r"(?P<server>[^/]+)/(?P<media>[^/]+)"
)


def _forbidden(what: str) -> errors.MatrixError:
    return errors.MatrixError(403, "M_FORBIDDEN", f"External participants cannot {what}")


def _confinable(method: str, path: str) -> tuple[str, re.Match[str] | None] | None:
    """("directory" | "profile" | "media", the path's match) for a request confinement looks
    at; None for every other request (cheap string tests first: this runs on each one)."""
    if method == "POST":
        return ("directory", None) if _DIRECTORY.match(path) else None
    if method not in ("GET", "HEAD") or not ("/profile/" in path or "/media/" in path):
        return None
    if (profile := _PROFILE.match(path)) is not None:
        return "profile", profile
    if (media := _MEDIA.match(path)) is not None:
        return "media", media
    return None


class Confinement:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

    async def check(self, scope: Scope, path: str) -> None:
        """Raises ``MatrixError`` (403) if an external participant asks for what it may not."""
        confinable = _confinable(scope["method"], path)
        token = access_token(scope) if confinable is not None else None
        if confinable is None or token is None:
            return
        found = await self._redis.get(self._keys.context_external(appservice.token_digest(token)))
        if found is None:
            return  # not an external participant's credential
        user_id, _, room_id = (found.decode() if isinstance(found, bytes) else found).partition(" ")
        kind, match = confinable
        if kind == "directory":
            raise _forbidden("search the user directory")
        assert match is not None
        if kind == "profile" and unquote(match["user"]) != user_id:
            raise _forbidden("look up the profiles of other users")
        if kind == "media":
            mxc = f"mxc://{unquote(match['server'])}/{unquote(match['media'])}"
            if not await self._redis.sismember(self._keys.context_media(room_id), mxc):
                raise _forbidden("fetch media from outside their context")
