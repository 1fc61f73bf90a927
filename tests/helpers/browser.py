"""A real browser for page tests: Playwright's Python API driving Debian's chromium
(``/usr/bin/chromium``, installed by ``scripts/system_deps``; Playwright's own browser download is
not used). Screenshots go to ``build/screenshots/`` so a run leaves every page to look at."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "build" / "screenshots"
# Without the background-networking flags chromium keeps dialling Google's hosts, which this
# machine's closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 360, "height": 780}


@contextmanager
def chromium() -> Iterator:
    """A headless chromium (a Playwright ``Browser``) until the block ends; skips without one."""
    if not Path(CHROMIUM).exists():
        pytest.skip("browser tests need Debian's chromium (scripts/system_deps installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page, name: str) -> Path:
    """Write ``page`` as ``build/screenshots/<name>.png`` (full page) and return the path."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / (re.sub(r"[^A-Za-z0-9_.-]+", "-", name) + ".png")
    page.screenshot(path=str(path), full_page=True)
    return path
