"""Absolute URLs the API hands out (operation ``Location``s, export download links).

Behind a TLS-terminating load balancer the API sees plain HTTP, so a URL built from the request
would say ``http://``; with ``C3_API_PUBLIC_URL`` set, every URL starts with it instead."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from platform_core.settings import get_settings


def absolute_url(request: Request, name: str, **path_params: Any) -> str:
    public = get_settings().api_public_url
    if public:
        return public.rstrip("/") + str(request.app.url_path_for(name, **path_params))
    return str(request.url_for(name, **path_params))
