"""The code's shape, checked like behaviour: no function in services/ past ruff's complexity
limit (C901, max 12 in pyproject.toml), and the services never import each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("tenant_api", "provisioner", "homeserver_proxy")


def test_no_function_in_services_is_too_complex() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--select",
            "C901",
            "--output-format",
            "concise",
            "services",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_import_only_platform_core() -> None:
    crossings = []
    for service in SERVICES:
        for path in (ROOT / "services" / service).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top in SERVICES and top != service or top == "c3":
                        crossings.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not crossings, "\n".join(crossings)
