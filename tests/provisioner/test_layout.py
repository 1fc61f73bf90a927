"""The provisioner's shape: the platform's SQL lives in ``provisioner/repository.py``.

``tenant_databases.py`` is the exception: it administers PostgreSQL roles and databases, not the
platform's rows. The export scrub and the backends' usage counts run SQL on a homeserver's own
database through a plain connection (``conn.execute``), which is not platform SQL either."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "services" / "provisioner"
# A SQL statement built in place (``select(…)``), not a method of that name
# (``digest.update(…)``), or one run on an ORM session.
SQL = re.compile(
    r"(?<![\w.])(text|select|update|insert|delete)\(|\bsession\.(execute|scalars|scalar|get)\("
)
ALLOWED = {"repository.py", "tenant_databases.py"}


def test_sql_lives_in_the_repository() -> None:
    outside = [
        f"{p.relative_to(ROOT).as_posix()}:{n}"
        for p in sorted(ROOT.rglob("*.py"))
        if p.relative_to(ROOT).as_posix() not in ALLOWED
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if SQL.search(line)
    ]
    assert outside == []
