"""npm's own client for test tools fetched from the registry at test time (never committed):
one way to run it, where an unreachable registry skips the tests that need the tool
(:class:`ToolsUnavailable`) and any other failure (integrity mismatch, unknown version) fails
them. The tools are cached under ``~/.cache/c3-tools/`` (``C3_TOOLS_CACHE`` overrides)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# npm's error codes for a registry it cannot reach (the only failure that skips the checks).
UNREACHABLE = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH")


class ToolsUnavailable(Exception):
    """npm or the npm registry cannot be reached: the checks needing the tool cannot run here."""


def cache_root() -> Path:
    return Path(os.environ.get("C3_TOOLS_CACHE") or Path.home() / ".cache" / "c3-tools")


def run_npm(npm: str, args: list[str], what: str, cwd: Path | None = None) -> None:
    """``npm <args>`` against the registry; ``what`` names it in the failure
    (``npm ci of the monitoring schemas``)."""
    try:
        done = subprocess.run(
            [npm, *args, "--loglevel=error"], cwd=cwd, capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        raise ToolsUnavailable(f"{what} timed out: the npm registry is not reachable") from None
    if done.returncode != 0:
        failure = f"{what} failed: {done.stderr.strip()[-500:]}"
        if any(code in done.stderr for code in UNREACHABLE):
            raise ToolsUnavailable(failure)
        raise AssertionError(failure)  # reachable but wrong (integrity mismatch, version, ...)
