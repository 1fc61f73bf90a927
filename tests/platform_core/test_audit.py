"""One audit writer: every service (the API, the reconciler, the admin token's renewal) builds
its audit rows through ``platform_core.audit.add_event``, so an event looks the same whoever
writes it."""

from __future__ import annotations

import re
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"
BUILDS_A_ROW = re.compile(r"(?<!class )(?<![\w.])AuditEvent\(")


def test_audit_rows_are_built_in_one_place() -> None:
    builders = sorted(
        path.relative_to(SERVICES).as_posix()
        for path in SERVICES.rglob("*.py")
        if BUILDS_A_ROW.search(path.read_text())
    )
    assert builders == ["platform_core/audit.py"]
