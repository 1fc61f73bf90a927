"""Where clients find a tenant's homeserver, and the URLs SDKs build from an origin.

One tenant is reachable two ways: by Host (``https://acme.c3.example.com``) and by path prefix
(``http://127.0.0.1:8080/t/acme``). Synapse knows one ``public_baseurl`` (the Host form: the
stable URL an identity provider calls back), so only the proxy knows which way a client came in;
it answers "where is this homeserver" itself, in ``/.well-known/matrix/client`` and in the
``well_known`` of login answers, with the base URL the client used.

Some SDKs build media URLs from the origin only (matrix-js-sdk:
``new URL("/_matrix/client/v1/media/download/…", baseUrl)`` drops ``/t/<slug>``). Such a
request names no tenant by Host or prefix, but its path names the media's server: when that is a
tenant's server name, the request is that tenant's.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote

_MEDIA_READ = re.compile(
    r"^/_matrix/(?:media/(?:r0|v1|v3)|client/v1/media)/(?:download|thumbnail)/(?P<server>[^/]+)/"
)
# Browsers preflight an authenticated media request (it carries Authorization) with OPTIONS.
_MEDIA_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOGIN = re.compile(r"^/_matrix/client/(?:r0|v3|v1|unstable)/login$")
# Where a browser starts single sign-on (login, or re-authentication through the UIA fallback).
_SSO_START = re.compile(
    r"^/_matrix/client/(?:r0|v3|unstable/[^/]+)/"
    r"(?:login/(?:sso|cas)/redirect(?:/[^/]+)?|auth/m\.login\.sso/fallback/web)$"
)


def media_server_name(method: str, path: str) -> str | None:
    """The server name a media download/thumbnail request names (``acme.c3.test`` from
    ``/_matrix/client/v1/media/download/acme.c3.test/AbC``), else None."""
    if method not in _MEDIA_READ_METHODS:
        return None
    match = _MEDIA_READ.match(path)
    if match is None:
        return None
    try:
        return unquote(match["server"], errors="strict").lower()
    except UnicodeDecodeError:
        return None


def starts_sso(method: str, path: str) -> bool:
    """A browser starting single sign-on. Synapse keeps the SSO session in a cookie for the
    host the flow starts on, and the identity provider calls back at its ``public_baseurl``
    (the tenant's host name): a flow started under ``/t/<slug>`` would come back without its
    cookie, so the proxy sends it to the host name first."""
    return method in ("GET", "HEAD") and _SSO_START.match(path) is not None


def is_login(method: str, path: str) -> bool:
    return method == "POST" and _LOGIN.match(path) is not None


def login_answer_for(base_url: str, body: bytes) -> bytes | None:
    """A successful login answer with its ``well_known`` naming ``base_url`` (the same answer as
    ``/.well-known/matrix/client`` for the way the client came in), or None to leave it as is.
    Element-style clients switch to this URL after signing in."""
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(answer, dict):
        return None
    well_known = answer.get("well_known")
    if not isinstance(well_known, dict):
        return None  # Synapse sent none: nothing for the client to switch to
    homeserver = well_known.get("m.homeserver")
    if isinstance(homeserver, dict) and homeserver.get("base_url") == base_url:
        return None
    answer["well_known"] = {**well_known, "m.homeserver": {"base_url": base_url}}
    return json.dumps(answer).encode()
