"""prometheus-operator's CRD schemas for the chart's monitoring.coreos.com objects.

kubernetes-validate knows only Kubernetes' own kinds. For PodMonitor, ServiceMonitor,
PrometheusRule and ScrapeConfig the validators generated from prometheus-operator's CRDs come
from the npm package ``@kubernetes-models/prometheus-operator``: ``npm ci`` of the committed
``tests/deploy/monitoring/package-lock.json`` (npm checks every package against the lock's
sha512) into ``~/.cache/c3-tools/`` (``C3_TOOLS_CACHE`` overrides), never into the repository.
``monitoring/validate.mjs`` runs them. Without npm, node or the registry, :func:`validator`
raises :class:`ToolsUnavailable` and the tests that need it skip, naming why.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from tests.helpers.npm import ToolsUnavailable, cache_root, run_npm

SOURCES = Path(__file__).resolve().parent / "monitoring"
FILES = ("package.json", "package-lock.json", "validate.mjs")


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in FILES:
        digest.update((SOURCES / name).read_bytes())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def validator() -> Path:
    """The directory holding validate.mjs and its node_modules, installed on first use."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        raise ToolsUnavailable("node and npm are needed for prometheus-operator's CRD schemas")
    home = cache_root() / f"monitoring-schemas-{_fingerprint()}"
    if (home / "installed").exists():
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent) as scratch:
        staged = Path(scratch) / "schemas"
        staged.mkdir()
        for name in FILES:
            shutil.copy(SOURCES / name, staged / name)
        ci = ["ci", "--ignore-scripts", "--no-audit", "--no-fund"]
        run_npm(npm, ci, "npm ci of the monitoring schemas", cwd=staged)
        (staged / "installed").write_text("")
        shutil.rmtree(home, ignore_errors=True)
        # A rename is atomic: a concurrent run sees either no install or a complete one.
        try:
            staged.rename(home)
        except OSError:
            if not (home / "installed").exists():
                raise
    return home


def validate(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``[{kind, name, error}]`` for ``docs``, ``error`` None when the object matches its CRD."""
    home = validator()
    done = subprocess.run(
        [str(shutil.which("node")), "validate.mjs"],
        cwd=home,
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results
