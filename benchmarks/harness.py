"""What every benchmark script shares: a platform started for the run and always stopped (also
on failure, Ctrl-C or SIGTERM), with its data directory removed unless asked to keep it."""

from __future__ import annotations

import secrets
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

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
