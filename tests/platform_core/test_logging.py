"""Log lines: JSON objects with the request id (or text with it appended), and which client
request ids are kept."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import pytest

from platform_core.logging import configure, request_context, request_id_from


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """What this process logs (configure() in a test writes to the captured stdout/stderr);
    the logging set-up of the test session comes back afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield capsys
    root.handlers, root.level = saved[0], saved[1]
    logging.captureWarnings(False)


def test_json_lines_carry_the_request_and_tenant_ids(
    captured: pytest.CaptureFixture[str],
) -> None:
    configure("json")
    log = logging.getLogger("c3.test")
    log.info("outside")
    with request_context("req-12345678", "8f6c2a52-0000-4000-8000-000000000000"):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("inside %s", "a request")

    outside, inside = (json.loads(line) for line in captured.readouterr().out.splitlines())
    assert outside["request_id"] is None and "tenant_id" not in outside
    assert outside["ts"].endswith("+00:00") and outside["level"] == "INFO"
    assert inside["message"] == "inside a request" and inside["logger"] == "c3.test"
    assert inside["request_id"] == "req-12345678"
    assert inside["tenant_id"] == "8f6c2a52-0000-4000-8000-000000000000"
    assert "ValueError: boom" in inside["exception"]


def test_text_lines_name_the_request(captured: pytest.CaptureFixture[str]) -> None:
    configure("text")
    with request_context("req-12345678"):
        logging.getLogger("c3.test").warning("slow")
    assert captured.readouterr().err.rstrip().endswith("c3.test: slow [request_id=req-12345678]")


def test_only_sane_client_request_ids_are_kept() -> None:
    assert request_id_from("abc-123.def:ghi_") == "abc-123.def:ghi_"
    for unsafe in (None, "", "short", 'x" injected', "a\nb" * 8, "x" * 65):
        made = request_id_from(unsafe)
        assert made != unsafe and len(made) == 32


def test_new_request_ids_are_random_hex_and_not_shared_with_a_forked_child() -> None:
    made = [request_id_from(None) for _ in range(1000)]  # several draws from the system
    assert len(set(made)) == 1000
    assert all(len(id_) == 32 and int(id_, 16) >= 0 for id_ in made)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's next id is its own, not the parent's next one
        os.write(write, request_id_from(None).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert len(child) == 32 and child != request_id_from(None)
