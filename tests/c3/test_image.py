"""The platform image's Dockerfile, checked statically (the real build and run is
scripts/build_image, which CI runs as its own step: docs/image.md): a non-root numeric user,
tini as PID 1 in front of `c3`, OCI labels, a pinned Python 3.11 base taken as a build
argument, nothing secret copied in, and every role the Helm chart starts is a `c3` command
that the image's entrypoint reaches."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from c3.cli import app

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "deploy" / "helm" / "c3" / "templates"
ENTRYPOINT = ["/usr/bin/tini", "--", "c3"]
C3_IMAGE_TEMPLATE = '{{ include "c3.image" . }}'


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    result = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_multi_stage_on_a_pinned_python_311_base_given_as_a_build_argument() -> None:
    steps = instructions()
    froms = [rest for keyword, rest in steps if keyword == "FROM"]
    assert len(froms) >= 2, "builder and runtime stages"
    assert all(rest.split()[0] == "${BASE}" for rest in froms), froms
    base_default = next(
        rest.split("=", 1)[1]
        for keyword, rest in steps
        if keyword == "ARG" and rest.startswith("BASE=")
    )
    # A patch release (or a digest), never a floating tag such as python:3.11-slim or latest.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base_default)
    assert [rest for keyword, rest in final_stage() if keyword == "COPY"] == [
        "--from=builder /opt/c3 /opt/c3"
    ], "the runtime stage takes only the built virtualenv from the builder"


def test_runs_as_numeric_non_root_user_10001() -> None:
    users = [rest for keyword, rest in final_stage() if keyword == "USER"]
    assert users == ["10001:10001"]
    run = " ".join(rest for keyword, rest in final_stage() if keyword == "RUN")
    assert "--uid 10001" in run and "--gid 10001" in run


def test_entrypoint_is_tini_then_c3() -> None:
    (entrypoint,) = [json.loads(rest) for keyword, rest in final_stage() if keyword == "ENTRYPOINT"]
    assert entrypoint == ENTRYPOINT
    assert "tini" in " ".join(rest for keyword, rest in final_stage() if keyword == "RUN")


def test_read_only_root_settings() -> None:
    env = " ".join(rest for keyword, rest in final_stage() if keyword == "ENV")
    for setting in (
        "HOME=/tmp",
        "TMPDIR=/tmp",
        "C3_DATA_DIR=/var/lib/c3",
        "PYTHONDONTWRITEBYTECODE=1",
    ):
        assert setting in env
    builder_runs = " ".join(rest for keyword, rest in instructions() if keyword == "RUN")
    assert "compileall" in builder_runs, "bytecode is precompiled at build time"


def test_pg_dump_of_the_stated_major_version() -> None:
    steps = instructions()
    assert ("ARG", "PG_MAJOR=15") in steps
    run = " ".join(rest for keyword, rest in final_stage() if keyword == "RUN")
    assert "postgresql-client-${PG_MAJOR}" in run
    env = " ".join(rest for keyword, rest in final_stage() if keyword == "ENV")
    assert "/usr/lib/postgresql/${PG_MAJOR}/bin" in env


def test_oci_labels() -> None:
    labels = " ".join(rest for keyword, rest in final_stage() if keyword == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_nothing_secret_is_copied_and_the_context_is_an_allowlist() -> None:
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "the build context starts empty"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    # `COPY . ./` copies exactly these: .c3/ (local secrets), .venv/, .git/ never reach a layer.
    assert allowed == {
        "pyproject.toml",
        "requirements.lock",
        "README.md",
        "alembic.ini",
        "migrations",
        "services",
    }
    for keyword, rest in instructions():
        if keyword not in ("COPY", "ADD"):
            continue
        assert keyword == "COPY", "ADD can fetch URLs and unpack archives; COPY only"
        if "--from=" in rest:
            continue
        *sources, _ = [a for a in shlex.split(rest) if not a.startswith("--")]
        for source in sources:
            assert source == "." or source.rstrip("/") in allowed, source


def chart_containers(directory: Path) -> list[dict[str, Any]]:
    """The platform's own containers in the chart as helm renders it (with a backend that
    needs every role), found by their image."""
    from tests.helpers.helm import ToolsUnavailable, render

    values = {
        "existingSecret": "c3-secrets",
        "baseDomain": "chat.example.com",
        "kubernetes": {"databaseCidr": "10.0.0.5/32"},
        "image": {"repository": "c3-image", "tag": "test"},
    }
    try:
        documents = render(values, directory)
    except ToolsUnavailable as exc:
        pytest.skip(f"no helm: {exc}")
    containers: list[dict[str, Any]] = []
    for document in documents:
        spec = document.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec") or (
            spec if document.get("kind") == "Pod" else {}
        )
        containers.extend(pod.get("containers") or [])
    # Only the platform's own containers: a `helm test` pod may run another image.
    return [c for c in containers if str(c.get("image", "")).startswith("c3-image:")]


def test_every_chart_role_is_a_c3_command_through_the_image_entrypoint(tmp_path: Path) -> None:
    commands = {command.name or command.callback.__name__ for command in app.registered_commands}
    commands |= {group.name for group in app.registered_groups if group.name}  # c3 probe …
    containers = chart_containers(tmp_path)
    roles = {container["args"][0] for container in containers if container.get("args")}
    # probe: the `helm test` pod checks the API and the proxy with the same image.
    assert roles == {"api", "proxy", "worker", "beat", "migrate", "probe"}, roles
    assert roles <= commands, roles - commands
    # `command:` would replace the image's ENTRYPOINT, i.e. tini as PID 1; args alone follow it.
    overriding = [c["name"] for c in containers if c.get("command") not in (None, ENTRYPOINT)]
    assert not overriding, f"chart containers bypass the image's tini entrypoint: {overriding}"
