"""Which client requests carry billable facts, and reading those facts from the exchange.

The patterns mirror Synapse's own routes on the raw path (Synapse matches the undecoded path
too), and a fact is only taken from a successful answer: a message is billed by the
``event_id`` the homeserver returned, an upload by the ``mxc`` URI it created.

End-to-end encryption hides the event type of timeline events: a ``m.call.invite`` sent in
an encrypted room travels as ``m.room.encrypted`` and is billed as a message, not a call.
MatrixRTC membership is room state, which is never encrypted, so group calls are always seen.
"""

from __future__ import annotations

import json
import re
from enum import Enum, auto
from typing import Any
from urllib.parse import unquote

_CLIENT = r"^/_matrix/client/(?:r0|v3|unstable)"
_SEND = re.compile(_CLIENT + r"/rooms/[^/]*/send/(?P<type>[^/]*)/[^/]*$")
_STATE = re.compile(_CLIENT + r"/rooms/[^/]*/state/(?P<type>[^/]*)(?:/[^/]*)?$")
_UPLOAD = re.compile(r"^/_matrix/media/(?:r0|v3|v1)/upload/?$")
_UPLOAD_ASYNC = re.compile(
    r"^/_matrix/media/(?:r0|v3|v1)/upload/(?P<server>[^/]+)/(?P<media>[^/]+)$"
)
_MEDIA_EGRESS = re.compile(
    r"^/_matrix/(?:media/(?:r0|v3|v1)|client/v1/media)/(?:download|thumbnail)/"
)
_LOGIN = re.compile(r"^/_matrix/client/(?:r0|v3|v1|unstable)/(?:login|register)$")
_WHOAMI = re.compile(_CLIENT + r"/account/whoami$")

CALL_INVITE = "m.call.invite"
RTC_MEMBER_TYPES = frozenset({"m.call.member", "org.matrix.msc3401.call.member"})


class Kind(Enum):
    OTHER = auto()
    SEND = auto()  # a timeline event: a message (and a call if it is m.call.invite)
    SEND_CALL_INVITE = auto()
    RTC_MEMBER = auto()  # MatrixRTC membership state: a participant joins or leaves a call
    UPLOAD = auto()
    UPLOAD_ASYNC = auto()
    MEDIA_EGRESS = auto()
    LOGIN = auto()  # login or register: the answer names the user of a new access token
    WHOAMI = auto()

    @property
    def captures_response(self) -> bool:
        """Whether the answer's (small JSON) body must be read to bill the request."""
        return self not in (Kind.OTHER, Kind.MEDIA_EGRESS, Kind.UPLOAD_ASYNC)


def kind_of(method: str, path: str) -> Kind:
    """What a client request may bill, from its method and raw path alone."""
    if not path.startswith("/_matrix/"):
        return Kind.OTHER
    if method == "PUT":
        if (match := _SEND.match(path)) is not None:
            return Kind.SEND_CALL_INVITE if unquote(match["type"]) == CALL_INVITE else Kind.SEND
        if (match := _STATE.match(path)) is not None:
            return Kind.RTC_MEMBER if unquote(match["type"]) in RTC_MEMBER_TYPES else Kind.OTHER
        if _UPLOAD_ASYNC.match(path):
            return Kind.UPLOAD_ASYNC
    elif method == "POST":
        if _UPLOAD.match(path):
            return Kind.UPLOAD
        if _LOGIN.match(path):
            return Kind.LOGIN
    elif method == "GET":
        if _MEDIA_EGRESS.match(path):
            return Kind.MEDIA_EGRESS
        if _WHOAMI.match(path):
            return Kind.WHOAMI
    return Kind.OTHER


def async_upload_uri(path: str) -> str | None:
    match = _UPLOAD_ASYNC.match(path)
    if match is None:
        return None
    return f"mxc://{unquote(match['server'])}/{unquote(match['media'])}"


def json_object(payload: bytes | None) -> dict[str, Any] | None:
    if not payload:
        return None
    try:
        decoded = json.loads(payload)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


def string_field(payload: dict[str, Any] | None, name: str) -> str | None:
    if payload is None:
        return None
    value = payload.get(name)
    return value if isinstance(value, str) and value else None


_EVENT_ID_ANSWER = b'{"event_id":"'
# A JSON string's content that means itself: no quote, backslash (escapes) or control byte.
_LITERAL_JSON_STRING = re.compile(rb'[^"\\\x00-\x1f]*')


def event_id(answer: bytes | None) -> str | None:
    """``string_field(json_object(answer), "event_id")``: the event a send's answer names.

    Synapse answers ``{"event_id":"$…"}``, compact; that shape is read by slicing (~8,000
    instructions against ~20,000 for ``json.loads``, paid by every send), anything else is
    parsed. ``test_billable`` holds the two ways equal."""
    if (
        answer is not None
        and answer.startswith(_EVENT_ID_ANSWER)
        and answer.endswith(b'"}')
        and _LITERAL_JSON_STRING.fullmatch(answer, 13, len(answer) - 2) is not None
    ):
        try:  # as json.loads decodes bytes (``surrogatepass``)
            return answer[13:-2].decode("utf-8", "surrogatepass") or None
        except UnicodeDecodeError:
            return None
    return string_field(json_object(answer), "event_id")


def joins_call(request_body: bytes | None) -> bool:
    """A MatrixRTC membership event that joins (not leaves) a call.

    Leaving is an empty content ``{}`` (MSC4143) or an empty ``memberships`` list (the legacy
    MSC3401 shape)."""
    content = json_object(request_body)
    if not content:
        return False
    memberships = content.get("memberships")
    if memberships is not None:
        return isinstance(memberships, list) and len(memberships) > 0
    return True
