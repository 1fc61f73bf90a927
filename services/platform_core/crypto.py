"""Encryption of secrets at rest (homeserver admin tokens, registration secrets)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    """Fernet (AES-128-CBC + HMAC-SHA256) keyed from C3_SECRET_KEY."""

    def __init__(self, secret_key: str) -> None:
        derived = hashlib.sha256(b"c3/secrets-at-rest/v1\x00" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("secret cannot be decrypted: was C3_SECRET_KEY changed?") from exc

    def encrypt_json(self, value: dict[str, Any]) -> str:
        return self.encrypt(json.dumps(value, sort_keys=True))

    def decrypt_json(self, token: str) -> dict[str, Any]:
        loaded = json.loads(self.decrypt(token))
        if not isinstance(loaded, dict):
            raise ValueError("encrypted secret is not a JSON object")
        return loaded
