"""Keeps credentials that travel in URLs out of the API's access log (uvicorn logs every
request's path and query string): registration tokens in ``…/registration-tokens/{token}``
paths and export link signatures (``?sig=…``)."""

from __future__ import annotations

import logging
import re

_CREDENTIALS_IN_URLS = (
    re.compile(r"(/registration-tokens/)[^/?\s\"]+"),
    re.compile(r"([?&]sig=)[^&\s\"]*"),
)


def redact(text: str) -> str:
    for pattern in _CREDENTIALS_IN_URLS:
        text = pattern.sub(r"\1<redacted>", text)
    return text


class RedactCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


def install() -> None:
    """Install the filter on uvicorn's access logger once (the API factory may run again)."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactCredentials) for f in logger.filters):
        logger.addFilter(RedactCredentials())
