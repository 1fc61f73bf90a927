"""Verifying C3's webhook deliveries: Standard Webhooks 1.0 (standardwebhooks.com). Each
delivery carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256>`` entries (two while a
secret is being rotated), each over ``<id>.<timestamp>.<raw body>`` with the endpoint's
secret ``whsec_<base64 key>``.

    payload = verify_webhook(secret, request.headers, await request.body())
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from c3.sdk.errors import WebhookVerificationError

SECRET_PREFIX = "whsec_"


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the webhook secret is not whsec_<base64>") from None


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing {name} header")


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``v1,<base64>`` signature of one delivery (what a sender puts in
    ``webhook-signature``)."""
    raw = body.encode() if isinstance(body, str) else body
    signed = f"{webhook_id}.{timestamp}.".encode() + raw
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> Any:
    """The delivery's JSON payload when one of its signatures is ``secret``'s and its
    timestamp is within ``tolerance`` seconds of now; ``WebhookVerificationError`` otherwise.
    Pass the body exactly as received (bytes): re-serialised JSON does not verify."""
    webhook_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not Unix seconds") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {current - timestamp:+.0f} s from now (tolerance {tolerance} s)"
        )
    expected = sign(secret, webhook_id, timestamp, body).encode()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        # Constant time: how much of a forged signature matched must not show in the timing.
        if version == "v1" and hmac.compare_digest(f"v1,{value}".encode(), expected):
            raw = body.encode() if isinstance(body, str) else body
            try:
                return json.loads(raw)
            except ValueError:
                raise WebhookVerificationError("the signed body is not JSON") from None
    raise WebhookVerificationError("no webhook-signature matches this secret")
