"""Packaging: the built wheel, installed into a fresh virtualenv outside the source tree, can
migrate a database (its migrations travel inside it); the lock file covers every dependency
`pyproject.toml` declares; the pinned uvicorn still has the private protocol class the proxy's
first gate subclasses."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from platform_core.migrate import head_revision

ROOT = Path(__file__).resolve().parents[2]


def test_built_wheel_migrates_outside_the_source_tree(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("c3-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )

    # Dependencies come from this test run's environment (a full install of Synapse & co would
    # take minutes); C3 itself only from the wheel: no source tree on the path, cwd elsewhere.
    work = tmp_path / "elsewhere"
    work.mkdir()
    database = work / "platform.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("C3_", "PYTHON"))}
    env.update(
        PYTHONPATH=sysconfig.get_paths()["purelib"],
        C3_DATA_DIR=str(work / "data"),
        C3_DATABASE_URL=f"sqlite:///{database}",
    )
    where = subprocess.run(
        [str(python), "-c", "import platform_core, c3; print(platform_core.__file__)"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert str(env_dir) in where and str(ROOT) not in where, where

    result = subprocess.run(
        [str(python), "-m", "c3", "migrate"], cwd=work, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "latest revision" in result.stdout

    with sqlite3.connect(database) as conn:
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision == head_revision()


def _locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line.split(";", 1)[0].strip())
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"not pinned in requirements.lock: {line}"
            pins[canonicalize_name(requirement.name)] = Version(spec.version)
    return pins


def test_lock_file_pins_every_declared_dependency_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    pins = _locked()
    stale = []
    for text in declared:
        requirement = Requirement(text)
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None or pinned not in requirement.specifier:
            stale.append(f"{text} (locked: {pinned})")
    assert not stale, "requirements.lock is not current; run scripts/lock: " + ", ".join(stale)


def test_uvicorn_protocol_class_the_wall_subclasses_keeps_its_shape() -> None:
    """The first gate (request head size, timeouts, framing) subclasses uvicorn's private
    ``HttpToolsProtocol``: a uvicorn release that renames or reshapes what it overrides or reads
    must fail here, loudly, not in production. pyproject bounds uvicorn to the tested range."""
    import inspect

    import uvicorn
    from uvicorn.protocols.http import httptools_impl

    assert Version(uvicorn.__version__) in Requirement(_uvicorn_requirement()).specifier
    assert isinstance(httptools_impl.STATUS_LINE, dict) and 400 in httptools_impl.STATUS_LINE
    protocol = httptools_impl.HttpToolsProtocol
    overridden = {
        "connection_made": ["transport"],
        "connection_lost": ["exc"],
        "data_received": ["data"],
        "handle_websocket_upgrade": [],
        "send_400_response": ["msg"],
        "on_message_begin": [],
        "on_headers_complete": [],
        "on_message_complete": [],
    }
    for name, params in overridden.items():
        method = getattr(protocol, name, None)
        assert callable(method), f"HttpToolsProtocol.{name} is gone"
        assert list(inspect.signature(method).parameters)[1:] == params, name

    # Attributes the subclass reads, assigned somewhere in the class (some only once a
    # connection or a request begins).
    assigned = set(re.findall(r"self\.(\w+)(?:\s*:[^=\n]+)?\s*=", inspect.getsource(protocol)))
    for attribute in ("loop", "flow", "headers", "url", "cycle", "transport", "parser"):
        assert attribute in assigned, f"HttpToolsProtocol no longer sets self.{attribute}"


def _uvicorn_requirement() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (text,) = [d for d in project["dependencies"] if d.startswith("uvicorn")]
    return text


def test_python_jose_floor_is_its_patched_release() -> None:
    """python-jose before 3.4.0 has the algorithm-confusion and JWE-bomb advisories
    (CVE-2024-33663, CVE-2024-33664): the dependency range must not admit it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (text,) = [d for d in project["dependencies"] if d.startswith("python-jose")]
    assert not Requirement(text).specifier.contains("3.3.0")
