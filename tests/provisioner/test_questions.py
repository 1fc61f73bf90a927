"""What a worker tells the API about a homeserver (provisioner.questions): the last lines of a
log file far larger than one read, and no credential in any of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from platform_core.worker_requests import redact
from provisioner.backends.local import LocalBackend


def test_the_last_lines_of_a_large_log_are_exact(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    directory = backend.tenant_dir("t1")
    directory.mkdir(parents=True)
    # ~1.5 MiB: many read chunks, and the last line without a newline (still being written).
    text = "".join(f"line {n} {'x' * 150}\n" for n in range(10_000)) + "line 10000 partial"
    (directory / "homeserver.log").write_text(text)
    lines = backend.log_lines("t1", 1000)
    assert len(lines) == 1000
    assert lines[0].startswith("line 9001 ") and lines[-1] == "line 10000 partial"
    assert backend.log_lines("t1", 1) == ["line 10000 partial"]


def test_stdout_is_read_when_synapse_never_opened_its_log(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    directory = backend.tenant_dir("t2")
    directory.mkdir(parents=True)
    (directory / "stdout.log").write_text("Traceback (most recent call last):\nboom\n")
    assert backend.log_lines("t2", 10) == ["Traceback (most recent call last):", "boom"]
    assert backend.log_lines("no-such-tenant", 10) == []


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ('"GET /_matrix/client/v3/sync?access_token=syt_abc&since=s1 HTTP/1.1"', "syt_abc"),
        ("GET /_matrix/media/v3/download/x?ACCESS_TOKEN=syt_upper", "syt_upper"),
        ("POST /login?password=hunter2-hunter2", "hunter2-hunter2"),
        ("Authorization: Bearer syt_header.part-2", "syt_header.part-2"),
        ("registration ?token=regtoken123&x=1", "regtoken123"),
    ],
)
def test_credentials_in_log_lines_are_redacted(line: str, secret: str) -> None:
    redacted = redact(line)
    assert secret not in redacted and "<redacted>" in redacted


def test_a_line_without_credentials_is_unchanged() -> None:
    line = "2026-12-04 - synapse.access - GET /_matrix/client/versions?since=s1 200"
    assert redact(line) == line
