"""Integrator API keys: ``c3k_<key id>_<secret><checksum>``.

The prefix makes leaked keys recognisable to secret scanners; the CRC32 checksum rejects typos
and random strings without a database lookup. Only a keyed hash of the whole key is stored.
"""

from __future__ import annotations

import secrets
import string
import zlib
from dataclasses import dataclass

PREFIX = "c3k_"
_ALPHABET = string.digits + string.ascii_letters
_KEY_ID_LEN = 12
_SECRET_LEN = 32
_CHECK_LEN = 6


def _base62(number: int, width: int) -> str:
    out = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LEN)


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    full: str


def generate() -> ParsedKey:
    key_id = _random(_KEY_ID_LEN)
    body = f"{PREFIX}{key_id}_{_random(_SECRET_LEN)}"
    return ParsedKey(key_id, body + _checksum(body))


def parse(candidate: str) -> ParsedKey | None:
    """The key's id if ``candidate`` is shaped like a C3 key with a valid checksum."""
    expected_len = len(PREFIX) + _KEY_ID_LEN + 1 + _SECRET_LEN + _CHECK_LEN
    if len(candidate) != expected_len or not candidate.startswith(PREFIX):
        return None
    body, check = candidate[:-_CHECK_LEN], candidate[-_CHECK_LEN:]
    if not secrets.compare_digest(_checksum(body), check):
        return None
    key_id = body[len(PREFIX) : len(PREFIX) + _KEY_ID_LEN]
    if body[len(PREFIX) + _KEY_ID_LEN] != "_":
        return None
    return ParsedKey(key_id, candidate)
