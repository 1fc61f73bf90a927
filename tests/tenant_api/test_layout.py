"""The tenant API's shape: SQL only in repositories (and the kit), one repository style, commits
only at the request boundary, one problem+json builder, domains that take shared things from the
kit, and audit events recorded and tasks enqueued by the services that change state."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "services" / "tenant_api"
# A SQL statement built in place (``select(…)``), not a method of that name (``router.delete(…)``).
SQL = re.compile(r"(?<![\w.])(text|select|update|insert|delete)\(")


def _sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_sql_lives_in_repositories_and_the_kit() -> None:
    outside = [
        f"{_relative(p)}:{n}"
        for p in _sources()
        if p.name != "repository.py" and not _relative(p).startswith("kit/")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if SQL.search(line)
    ]
    assert outside == []


def test_repositories_are_classes_on_the_kit_base() -> None:
    """One repository style: a class on ``Repository`` (async, the API) or ``SyncRepository``
    (sync, shared with Celery tasks); module-level helpers are private."""
    repositories = [p for p in _sources() if p.name == "repository.py" and p.parent.name != "kit"]
    public_functions = [
        f"{_relative(p)}:{n}"
        for p in repositories
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.match(r"(async )?def [a-z]", line)
    ]
    other_classes = [
        f"{_relative(p)}:{n}"
        for p in repositories
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if line.startswith("class ") and not re.match(r"class \w+\((Sync)?Repository\):", line)
    ]
    assert public_functions == [] and other_classes == []


def test_the_api_reaches_sync_code_through_run_sync_in_services() -> None:
    calling = [
        _relative(p) for p in _sources() if p.name != "service.py" and "run_sync(" in p.read_text()
    ]
    assert calling == []


def test_only_the_request_boundary_commits() -> None:
    committing = [
        _relative(p)
        for p in _sources()
        if p.name in ("endpoints.py", "service.py") and ".commit()" in p.read_text()
    ]
    assert committing == []


def test_one_problem_builder() -> None:
    builders = [_relative(p) for p in _sources() if "docs.c3.dev/problems" in p.read_text()]
    assert builders == ["kit/problems.py"]
    assert not any("about:blank" in p.read_text() for p in _sources())


def test_domains_take_shared_things_from_the_kit_not_from_tenants() -> None:
    kit_things = re.compile(
        r"from tenant_api\.tenants\.(endpoints|repository) import (enqueue|scoped)"
    )
    borrowing = [_relative(p) for p in _sources() if kit_things.search(p.read_text())]
    endpoints_imported = [
        _relative(p)
        for p in _sources()
        if not _relative(p).startswith("tenants/")
        and _relative(p) != "main.py"
        and "tenant_api.tenants.endpoints" in p.read_text()
    ]
    assert borrowing == [] and endpoints_imported == []


# An audit event written by hand: ``record(…)``, ``audit.record(…)``, ``record_as(…)`` or the row
# itself (``history.record`` — an operation's own transition log — is not the audit log).
AUDIT_WRITE = re.compile(r"(?<![\w.])(audit\.)?(record|record_as|AuditEvent)\(")


def test_services_record_audit_events_not_endpoints() -> None:
    recording = [
        f"{_relative(p)}:{n}"
        for p in _sources()
        if p.name == "endpoints.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if AUDIT_WRITE.search(line)
    ]
    assert recording == []


def test_services_enqueue_their_tasks_not_endpoints() -> None:
    enqueuing = [
        f"{_relative(p)}:{n}"
        for p in _sources()
        if p.name == "endpoints.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "enqueue(" in line
    ]
    assert enqueuing == []
