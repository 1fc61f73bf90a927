"""What every benchmark script shares: a platform started for the run and always stopped (also
on failure, Ctrl-C or SIGTERM), with its data directory removed unless asked to keep it."""

from __future__ import annotations

import json
import os
import platform as host_platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from tests.helpers.environment import (
    clear_namespace,
    create_postgres_database,
    drop_postgres_database,
)
from tests.helpers.platform import RunningPlatform, start_platform


def exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends the run like Ctrl-C does: through the ``finally`` that stops the platform."""
    sys.exit(128 + signum)


def stop_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, exit_on_sigterm)


def launch_platform(overrides: dict[str, str], data_dir: Path) -> RunningPlatform:
    """``start_platform``, and if it fails while ``c3 up`` still runs (it does not hand the
    process back then), interrupt that child so it stops everything it started."""
    try:
        return start_platform(overrides, data_dir, "c3op_bench_" + secrets.token_urlsafe(24))
    except BaseException:
        children = psutil.Process().children()
        for child in children:
            child.send_signal(signal.SIGINT)
        psutil.wait_procs(children, timeout=90)
        print(f"c3 up did not start; logs in {data_dir}", file=sys.stderr)
        raise


_GIT = ["git", "-C", str(Path(__file__).resolve().parent.parent)]  # this repository


def _is_services(spec: str) -> bool:
    return (Path(spec) / "homeserver_proxy").is_dir()


def against_problem(spec: str) -> str | None:
    """Why ``--against spec`` cannot be used (checked before a platform is started), or None."""
    if _is_services(spec):
        return None
    found = subprocess.run(
        [*_GIT, "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}"], capture_output=True
    )
    if found.returncode == 0:
        return None
    return f"--against {spec}: neither a services folder nor a git revision of this repository"


def other_services(spec: str, work: Path) -> tuple[Path, str]:
    """The ``services`` folder of a benchmark's ``--against`` and how to name it: a folder
    holding ``homeserver_proxy``, as it is (compiled modules and all), or a git revision of
    this repository, its ``services`` archived into ``work``."""
    if _is_services(spec):
        folder = Path(spec).resolve()
        return folder, str(folder)
    revision = subprocess.run(
        [*_GIT, "rev-parse", "--short", f"{spec}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    archive = subprocess.run(
        [*_GIT, "archive", revision, "services"], check=True, capture_output=True
    ).stdout
    into = work / f"against-{revision}"
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "services", revision


@contextmanager
def running_platform(
    overrides: dict[str, str], data_dir: Path, *, keep_data: bool
) -> Iterator[RunningPlatform]:
    """The platform for one run; on failure its log tail is printed and its data kept."""
    print(f"starting the platform in {data_dir} ...", flush=True)
    running = launch_platform(overrides, data_dir)
    failed = True
    try:
        yield running
        failed = False
    except BaseException:
        print("benchmark failed; platform logs:\n" + running.log_tail(), file=sys.stderr)
        raise
    finally:
        code = running.stop()
        print(f"platform stopped (exit {code})", flush=True)
        if failed or keep_data:
            print(f"data kept in {data_dir}", flush=True)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def in_process_environment(database_url: str | None, backend: str, name: str) -> Iterator[Path]:
    """The environment of a benchmark that runs platform code in its own process (no platform
    services): a fresh platform database (PostgreSQL through ``database_url``, dropped at the
    end; else SQLite), a Redis namespace of its own (``C3_REDIS_URL``, default the local Redis;
    its keys deleted at the end), a temporary data directory (yielded) and ``backend``."""
    data = Path(tempfile.mkdtemp(prefix=f"c3-{name}-"))
    namespace = f"c3-{name}-{uuid.uuid4().hex[:8]}"
    with fresh_database(database_url) as url:
        os.environ.update(
            {
                "C3_MODE": "local",
                "C3_DATA_DIR": str(data),
                "C3_DATABASE_URL": url or f"sqlite:///{data / 'platform.db'}",
                "C3_REDIS_URL": os.environ.get("C3_REDIS_URL", "redis://127.0.0.1:6379/0"),
                "C3_REDIS_NAMESPACE": namespace,
                "C3_SECRET_KEY": secrets.token_urlsafe(32),
                "C3_BASE_DOMAIN": "c3.test",
                "C3_BACKEND": backend,
            }
        )
        try:
            yield data
        finally:
            clear_namespace(os.environ["C3_REDIS_URL"], namespace)


@contextmanager
def fresh_database(admin_url: str | None) -> Iterator[str | None]:
    """A new PostgreSQL database for the run (dropped afterwards), or None for SQLite."""
    if admin_url is None:
        yield None
        return
    url, name = create_postgres_database(admin_url)
    try:
        yield url
    finally:
        drop_postgres_database(admin_url, name)


def add_tenant(session: Any, plan_id: Any, status: Any, *, prefix: str, **fields: Any) -> Any:
    """A new tenant (slug ``<prefix><10 hex digits>``) of ``plan_id`` in ``status``, added to
    ``session`` and flushed; ``fields`` set on it besides (``deleted_at``...)."""
    from platform_core.models import Tenant

    slug = f"{prefix}{uuid.uuid4().hex[:10]}"
    tenant = Tenant(
        slug=slug,
        display_name=slug,
        server_name=f"{slug}.c3.test",
        status=status,
        plan_id=plan_id,
        **fields,
    )
    session.add(tenant)
    session.flush()
    return tenant


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """``payload`` with the machine it ran on (``platform.platform()`` as ``"machine"``, unless
    ``payload`` records its own ``"machine"``), as ``benchmarks/results/<name>-<UTC stamp>.json``
    (values JSON does not know written as ``str()``); its path."""
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    path = results / f"{name}-{stamp}.json"
    report = payload if "machine" in payload else {**payload, "machine": host_platform.platform()}
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path
