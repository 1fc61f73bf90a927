"""Signed, expiring download links for tenant exports.

A link carries the export id and its expiry, signed with keyed BLAKE2b under a key derived from
``C3_SECRET_KEY``: it works without an ``Authorization`` header (a browser, ``curl``) until it
expires, and nobody can forge one for another export or stretch its expiry. The signature is a
credential while the link lives, so it is kept out of the access log too.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import datetime

_KEY_CONTEXT = b"c3/export-download-links/v1\x00"


def _key(secret_key: str) -> bytes:
    return hashlib.sha256(_KEY_CONTEXT + secret_key.encode()).digest()


def signature(secret_key: str, export_id: uuid.UUID, expires: int) -> str:
    message = f"{export_id}.{expires}".encode()
    return hashlib.blake2b(message, key=_key(secret_key), digest_size=32).hexdigest()


def is_valid(secret_key: str, export_id: uuid.UUID, expires: int, candidate: str) -> bool:
    """Constant-time check of a link's signature (its expiry is checked separately, so an
    expired but genuine link can be told apart: 410, not 404)."""
    expected = signature(secret_key, export_id, expires)
    return hmac.compare_digest(expected.encode(), candidate.encode("utf-8", "replace"))


def query(secret_key: str, export_id: uuid.UUID, expires_at: datetime) -> dict[str, str]:
    """The query parameters of a download link valid until ``expires_at``."""
    expires = int(expires_at.timestamp())
    return {"expires": str(expires), "sig": signature(secret_key, export_id, expires)}
