"""The widget's script as the API serves it: read once, gzipped once, named by a content hash.

The public path carries the C3 release (``/widget/<version>/c3-conversation.js``), so a page
pinned to a release gets exactly that script and browsers may cache it for a year."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

SOURCE = Path(__file__).with_name("c3-conversation.js")
FILE_NAME = SOURCE.name
# The budget docs/widget.md promises and a test enforces: the gzipped script, in bytes.
GZIP_BUDGET_BYTES = 60 * 1024


@dataclass(frozen=True)
class WidgetAsset:
    version: str
    source: bytes
    gzipped: bytes
    etag: str


def release() -> str:
    """The installed C3 release: the version segment of the widget's path."""
    try:
        return metadata.version("c3")
    except metadata.PackageNotFoundError:  # running from a source tree without an install
        return "0.0.0"


@cache
def widget_asset() -> WidgetAsset:
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:20]
    # mtime=0: the same source always gzips to the same bytes (one ETag on every replica).
    gzipped = gzip.compress(source, compresslevel=9, mtime=0)
    return WidgetAsset(version=release(), source=source, gzipped=gzipped, etag=f'"{digest}"')
