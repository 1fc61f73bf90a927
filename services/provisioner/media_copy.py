"""Copy a homeserver's local media through Synapse's own APIs into a media_store directory.

For a backend whose media the worker cannot read as files (kubernetes: it lives on the pod's
volume). With the platform admin's access token: the admin API's media statistics name every
local user who uploaded something (``GET /_synapse/admin/v1/statistics/users/media``), each
user's media list names the items (``GET /_synapse/admin/v1/users/<user>/media``), and each is
downloaded through authenticated media (``GET /_matrix/client/v1/media/download/<server>/<id>``)
straight to disk — a chunk at a time, a few at once — in Synapse's own layout,
``local_content/<aa>/<bb>/<rest of the id>``: the export archive then has the same format as a
local tenant's. Not copied: thumbnails (Synapse makes them again from the originals when one is
asked for), URL previews' cached pages and images (a cache), an upload created but never sent
(``/create`` without the upload: it has no bytes), and media recorded without an uploader.

A homeserver that does not answer, times out or answers 5xx is a TemporaryError (the operation
retries); an item listed but gone by the time it is fetched (deleted, quarantined) is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from platform_core.errors import TemporaryError, UpstreamError
from platform_core.private_files import create_private
from platform_core.synapse_admin import path_segment

log = logging.getLogger(__name__)

_PAGE = 100
_CHUNK = 256 * 1024
# Synapse's media ids are random letters; anything else must not become a path.
_MEDIA_ID = re.compile(r"[A-Za-z0-9_-]{5,255}")


@dataclass(frozen=True)
class MediaAccess:
    """Where the homeserver answers, as whom, and the server name its media ids belong to."""

    base_url: str
    access_token: str
    server_name: str


@dataclass
class CopyReport:
    files: int = 0
    bytes: int = 0
    skipped: int = 0


def local_content_path(media_store: Path, media_id: str) -> Path:
    """Where Synapse's media repository keeps a local upload (``filepath.local_media_filepath``)."""
    return media_store / "local_content" / media_id[:2] / media_id[2:4] / media_id[4:]


def copy_local_media(
    access: MediaAccess,
    media_store: Path,
    *,
    concurrency: int = 4,
    timeout_s: float = 60.0,
) -> CopyReport:
    """Download every local media item of the homeserver into ``media_store`` (created 0700);
    blocking, for a worker (whose operation runner keeps the tenant's lease alive meanwhile).
    Files are written 0600, complete or not at all."""
    media_store.mkdir(mode=0o700, parents=True, exist_ok=True)
    return asyncio.run(_copy(access, media_store, concurrency, timeout_s))


async def _copy(
    access: MediaAccess,
    media_store: Path,
    concurrency: int,
    timeout_s: float,
) -> CopyReport:
    report = CopyReport()
    slots = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {access.access_token}"}
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
    async with httpx.AsyncClient(
        base_url=access.base_url, headers=headers, timeout=timeout
    ) as client:
        pending: set[asyncio.Task[None]] = set()
        try:
            async for media_id in _local_media_ids(client):
                await slots.acquire()
                task = asyncio.create_task(
                    _download(client, access.server_name, media_id, media_store, report)
                )
                task.add_done_callback(lambda _: slots.release())
                pending.add(task)
                pending = await _reap(pending)
            await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    log.info(
        "copied %d media files (%d bytes) from %s, %d skipped",
        report.files,
        report.bytes,
        access.server_name,
        report.skipped,
    )
    return report


async def _reap(pending: set[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
    """Drop finished downloads, raising the first one's error."""
    done = {task for task in pending if task.done()}
    for task in done:
        task.result()
    return pending - done


async def _local_media_ids(client: httpx.AsyncClient) -> AsyncIterator[str]:
    async for user in _pages(client, "/_synapse/admin/v1/statistics/users/media", "users"):
        user_id = user.get("user_id")
        if not isinstance(user_id, str) or not user.get("media_count"):
            continue  # media recorded without an uploader cannot be listed by user
        path = f"/_synapse/admin/v1/users/{path_segment(user_id)}/media"
        # Oldest first: an upload made meanwhile lands on a later page, not on one read.
        order = {"order_by": "created_ts", "dir": "f"}
        async for item in _pages(client, path, "media", order, skip_missing=True):
            if item.get("url_cache") or item.get("media_length") is None:
                continue  # a URL preview's cached copy, or an upload never completed
            media_id = str(item.get("media_id", ""))
            if _MEDIA_ID.fullmatch(media_id):
                yield media_id
            else:
                log.warning("skipped a media item with an unexpected id")


async def _pages(
    client: httpx.AsyncClient,
    path: str,
    key: str,
    params: dict[str, str] | None = None,
    *,
    skip_missing: bool = False,
) -> AsyncIterator[dict[str, Any]]:
    """Every item of a paginated admin API list (``from``/``limit``, ``next_token``).
    ``skip_missing``: a 404 (the user is not a local account) is an empty list."""
    start: Any = 0
    while True:
        page = {**(params or {}), "from": str(start), "limit": str(_PAGE)}
        answer = await _get_json(client, path, page, skip_missing=skip_missing)
        for item in answer.get(key) or []:
            if isinstance(item, dict):
                yield item
        start = answer.get("next_token")
        if start is None:
            return


async def _get_json(
    client: httpx.AsyncClient, path: str, params: dict[str, str], *, skip_missing: bool
) -> dict[str, Any]:
    try:
        response = await client.get(path, params=params)
    except httpx.HTTPError as exc:
        raise TemporaryError(f"homeserver unreachable listing media: {type(exc).__name__}") from exc
    if skip_missing and response.status_code == 404:
        return {}
    _raise_for(response, "listing media")
    payload = response.json()
    if not isinstance(payload, dict):
        raise UpstreamError("homeserver answered a non-object listing media")
    return payload


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.status_code >= 500 or response.status_code == 429:
        raise TemporaryError(f"homeserver answered {response.status_code} {what}")
    if response.status_code == 401:
        # The platform admin's token was signed out: the next use of the admin API renews it.
        raise TemporaryError(f"homeserver refused the platform admin's token {what}")
    if response.status_code >= 400:
        raise UpstreamError(f"homeserver answered {response.status_code} {what}")


async def _download(
    client: httpx.AsyncClient,
    server_name: str,
    media_id: str,
    media_store: Path,
    report: CopyReport,
) -> None:
    dest = local_content_path(media_store, media_id)
    if dest.is_file():
        return  # listed twice (a retried page)
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    path = f"/_matrix/client/v1/media/download/{path_segment(server_name)}/{media_id}"
    try:
        async with client.stream("GET", path) as response:
            if response.status_code == 404:
                report.skipped += 1  # deleted or quarantined since it was listed
                return
            _raise_for(response, "downloading media")
            size = await _write(response, partial)
    except httpx.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise TemporaryError(f"media download failed: {type(exc).__name__}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(dest)
    report.files += 1
    report.bytes += size


def _fresh_private(path: Path) -> int:
    """``path`` created anew, private (a partial file of an earlier try is dropped)."""
    path.unlink(missing_ok=True)
    return create_private(path)


async def _write(response: httpx.Response, partial: Path) -> int:
    size = 0
    with os.fdopen(_fresh_private(partial), "wb") as out:
        async for chunk in response.aiter_bytes(_CHUNK):
            out.write(chunk)
            size += len(chunk)
    return size
