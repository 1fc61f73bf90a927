"""Which request paths may reach a tenant's homeserver.

The check runs on a canonical form of the path (percent-decoding repeated until stable, case
folded, repeated slashes collapsed, ``;params`` dropped) so that no encoding trick reaches
``/_synapse/admin``; dot segments are refused outright rather than resolved.
"""

from __future__ import annotations

import functools
import re
from enum import Enum
from urllib.parse import unquote, unquote_to_bytes

FORWARDED_PREFIXES = ("/_matrix/client/", "/_matrix/media/", "/_synapse/client/")
# Server-server API: forwarded only for a tenant whose homeserver federates (the app decides).
FEDERATION_PREFIXES = ("/_matrix/federation/", "/_matrix/key/")
_FORBIDDEN_PREFIXES = ("/_synapse/admin",)
_MAX_DECODE_ROUNDS = 4
_SLASHES = re.compile(r"/{2,}")


class Verdict(Enum):
    FORWARD = "forward"
    WELL_KNOWN_CLIENT = "well-known-client"
    WELL_KNOWN_SERVER = "well-known-server"
    FEDERATION = "federation"  # server-server API: forwarded only if the tenant federates
    NOT_SERVED = "not-served"  # outside the allowed prefixes, or admin: 404 M_UNRECOGNIZED
    MALFORMED = "malformed"  # dot segments, control bytes, endless encodings: 400


# A decoded path holding none of these, nor "//" or "/.", is its own canonical form in lower
# case: no second encoding ("%"), control byte, backslash or ``;params``, no repeated slash, and
# no segment starting with a dot (every dot segment does; so do some harmless ones, which take
# the long way).
_TAKES_CARE = re.compile(r"[\x00-\x1f\x7f\\;%]")


def canonical_path(raw_path: str) -> str | None:
    """The path as any server could end up reading it, or None if it is malformed.

    Most paths are plain or hold one encoding of a room or user id: one decoding and four
    searches tell those apart (~20,000 instructions against ~130,000 for the long way, paid by
    every send: its txn id makes its path new to the verdict cache). ``test_guard`` holds the
    two ways equal."""
    # What ``unquote(raw_path, errors="strict")`` gives, or raises: it decodes each stretch of
    # ASCII alone, and UTF-8 broken in one stays broken beside a character that is not ASCII.
    decoded = unquote_to_bytes(raw_path).decode() if "%" in raw_path else raw_path
    if (
        _TAKES_CARE.search(decoded) is None
        and "//" not in decoded
        and "/." not in decoded
        and not decoded.startswith(".")
    ):
        return decoded.lower()
    return _canonical_path(raw_path)


def _canonical_path(raw_path: str) -> str | None:
    decoded = raw_path
    for _ in range(_MAX_DECODE_ROUNDS):
        once = unquote(decoded, errors="strict") if "%" in decoded else decoded
        if once == decoded:
            break
        decoded = once
    else:
        return None
    if any(ch < " " or ch == "\x7f" or ch == "\\" for ch in decoded):
        return None
    segments = []
    for segment in decoded.split("/"):
        bare = segment.split(";", 1)[0]
        if bare in (".", ".."):
            return None
        segments.append(bare)
    return _SLASHES.sub("/", "/".join(segments)).lower()


_CACHED_PATH_CHARS = 256


def classify(raw_path: str) -> Verdict:
    """The verdict on a raw request path. Most requests repeat a handful of paths (``/sync``,
    ``/versions``, ``whoami``): their verdicts are kept, in a bounded cache of short paths
    only, so unique paths (room and txn ids) push older entries out and a long one (a head
    may be 64 KiB) is never kept."""
    if len(raw_path) <= _CACHED_PATH_CHARS:
        return _classify_cached(raw_path)
    return _classify(raw_path)


def _classify(raw_path: str) -> Verdict:
    if not raw_path.startswith("/"):
        return Verdict.MALFORMED
    try:
        canonical = canonical_path(raw_path)
    except UnicodeDecodeError:
        return Verdict.MALFORMED
    if canonical is None:
        return Verdict.MALFORMED
    if canonical.startswith(_FORBIDDEN_PREFIXES):
        return Verdict.NOT_SERVED
    if canonical == "/.well-known/matrix/client":
        return Verdict.WELL_KNOWN_CLIENT
    if canonical == "/.well-known/matrix/server":
        return Verdict.WELL_KNOWN_SERVER
    # The raw path must carry the prefix literally too: what we forward is the raw path. (A raw
    # path that starts with one of them canonically starts with the same one.)
    if raw_path.startswith(FORWARDED_PREFIXES) and canonical.startswith(FORWARDED_PREFIXES):
        return Verdict.FORWARD
    if raw_path.startswith(FEDERATION_PREFIXES) and canonical.startswith(FEDERATION_PREFIXES):
        return Verdict.FEDERATION
    return Verdict.NOT_SERVED


_classify_cached = functools.lru_cache(maxsize=4096)(_classify)
