"""`c3 probe worker|beat|http`, the chart's exec probes and `helm test` command, against a real
Celery worker and beat on the test Redis and database, and a real `c3 api`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from c3.local_run import free_port
from tests.helpers.platform import poll, running_api


def _probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "c3", "probe", *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=60,
    )


@contextmanager
def _service(command: list[str], log: Path, env: dict[str, str]) -> Iterator[None]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "c3", *command], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.mark.parametrize(
    ("service", "lane", "other"),
    [
        (["worker", "--concurrency", "1"], [], ["--lane", "wake"]),
        (["worker", "--lane", "wake"], ["--lane", "wake"], []),  # the chart's second container
    ],
    ids=["worker", "wake-lane"],
)
def test_worker_probe_follows_the_worker(
    platform_env: dict[str, str],
    tmp_path: Path,
    service: list[str],
    lane: list[str],
    other: list[str],
) -> None:
    env = dict(os.environ)
    absent = _probe("worker", *lane, "--timeout", "1", env=env)
    assert absent.returncode == 1
    assert "did not answer a ping within 1 s" in absent.stderr

    with _service(service, tmp_path / "worker.log", env):
        answered = poll(
            lambda: (
                (done := _probe("worker", *lane, "--timeout", "2", env=env)).returncode == 0
                and done
            ),
            timeout=90,
            what=f"the worker to answer c3 probe worker {' '.join(lane)}",
        )
        assert "answered" in answered.stdout
        # Each is its own node: the other's probe is not answered by this one.
        assert _probe("worker", *other, "--timeout", "1", env=env).returncode == 1

    after = _probe("worker", *lane, "--timeout", "1", env=env)
    assert after.returncode == 1


def test_worker_probe_refuses_a_lane_it_does_not_know(platform_env: dict[str, str]) -> None:
    # A typo must not quietly probe the main worker and report the pod healthy.
    done = _probe("worker", "--lane", "waek", "--timeout", "1")
    assert done.returncode == 2 and "'waek' is not one of 'all', 'wake'" in done.stderr


def test_worker_probe_fails_cleanly_without_a_broker(platform_env: dict[str, str]) -> None:
    env = {**os.environ, "C3_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    done = _probe("worker", "--timeout", "1", env=env)
    assert done.returncode == 1
    assert "cannot ping worker" in done.stderr and "Traceback" not in done.stderr


def test_beat_probe_follows_the_schedule_file(platform_env: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, "C3_DATA_DIR": str(tmp_path / "beat-data")}
    never = _probe("beat", env=env)
    assert never.returncode == 1
    assert "beat has written no schedule" in never.stderr

    with _service(["beat"], tmp_path / "beat.log", env):
        fresh = poll(
            lambda: (done := _probe("beat", env=env)).returncode == 0 and done,
            timeout=60,
            what="beat to write its schedule",
        )
        assert "beat wrote its schedule" in fresh.stdout

    # The same file judged by a stricter age limit: a beat that stopped writing is unhealthy.
    stale = _probe("beat", "--max-age", "0", env=env)
    assert stale.returncode == 1
    assert "beat last wrote its schedule" in stale.stderr


def test_http_probe_needs_every_url_healthy(platform_env: dict[str, str], tmp_path: Path) -> None:
    with running_api(dict(os.environ), tmp_path / "api.log") as (port, _):
        healthy = _probe("http", f"http://127.0.0.1:{port}/healthz")
        assert healthy.returncode == 0, healthy.stderr
        assert f"http://127.0.0.1:{port}/healthz: 200" in healthy.stdout

        missing = _probe(
            "http", f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{port}/nope"
        )
        assert missing.returncode == 1
        assert f"http://127.0.0.1:{port}/nope: 404" in missing.stdout

    closed = _probe("http", "--timeout", "1", f"http://127.0.0.1:{free_port()}/_c3/health")
    assert closed.returncode == 1
    assert "ConnectError" in closed.stderr
