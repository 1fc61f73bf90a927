"""The one ``application/problem+json`` (RFC 9457) body builder, for handlers and middleware."""

from __future__ import annotations

from typing import Any

PROBLEM = "application/problem+json"
TYPE_BASE = "https://docs.c3.dev/problems/"


def problem_body(
    status: int,
    title: str,
    detail: str,
    *,
    type_slug: str,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"{TYPE_BASE}{type_slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra or {})
    return body
