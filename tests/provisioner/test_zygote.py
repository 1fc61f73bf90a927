"""The Synapse zygote (issue 16, wake latency): the local backend forks real homeservers from a
pre-imported Synapse, each with an event loop of its own, recognised as the tenant's process,
stopped and restarted as before; a stale or dead zygote is replaced, a failing one falls back to
a plain start."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from provisioner.backends.base import HomeserverTarget
from provisioner.backends.local import LocalBackend
from provisioner.backends.zygote import Zygote
from provisioner.backends.zygote_server import MARKER
from provisioner.synapse_config import HomeserverSecrets
from tests.helpers.matrix import synapse_processes
from tests.helpers.platform import poll

pytestmark = pytest.mark.e2e


def target(backend: LocalBackend, name: str, taken: set[int]) -> HomeserverTarget:
    port = backend.allocate_port(taken)
    taken.update({port, port + 1})
    return HomeserverTarget(
        tenant_id=name,
        server_name=f"{name}.c3.test",
        public_baseurl=f"http://{name}.c3.test/",
        port=port,
        limits={},
        secrets=HomeserverSecrets.generate(),
    )


def healthy(backend: LocalBackend, target: HomeserverTarget) -> bool:
    try:
        return httpx.get(backend.upstream_url(target) + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def started(backend: LocalBackend, target: HomeserverTarget) -> psutil.Process:
    backend.render(target)
    backend.start(target)
    poll(lambda: healthy(backend, target), timeout=90, what=f"{target.tenant_id} to be healthy")
    [process] = synapse_processes(backend.tenant_dir(target.tenant_id) / "homeserver.yaml")
    return process


def zygote_pid(backend: LocalBackend) -> int | None:
    assert backend.zygote is not None
    return backend.zygote._live_pid()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    local = LocalBackend(tmp_path)
    yield local
    local.stop_all()  # the homeservers, then the zygote


def test_homeservers_are_forked_from_one_zygote_and_each_serves_on_its_own(
    backend: LocalBackend,
) -> None:
    taken: set[int] = set()
    alpha, beta = target(backend, "alpha", taken), target(backend, "beta", taken)
    first, second = started(backend, alpha), started(backend, beta)
    zygote = zygote_pid(backend)
    assert zygote is not None
    for name, process in (("alpha", first), ("beta", second)):
        assert MARKER in process.cmdline()  # forked: the zygote's command line
        assert process.ppid() != zygote  # re-parented away: it outlives the zygote
        assert process.cwd() == os.path.realpath(backend.tenant_dir(name))
    assert backend.is_running("alpha") and backend.is_running("beta")
    # Each has an event loop of its own: both answer, over and over, interleaved (with a
    # shared epoll one would miss the other's wake-ups and stall).
    for _ in range(20):
        assert healthy(backend, alpha) and healthy(backend, beta)
    assert httpx.get(backend.upstream_url(alpha) + "/_matrix/client/versions").status_code == 200

    backend.stop("alpha")
    assert not first.is_running() or first.status() == psutil.STATUS_ZOMBIE
    assert not backend.is_running("alpha")
    assert backend.is_running("beta") and healthy(backend, beta)

    # A homeserver outlives its zygote; the next start brings a new zygote.
    os.kill(zygote, signal.SIGKILL)
    poll(lambda: zygote_pid(backend) is None, timeout=10, what="the zygote to be gone")
    assert healthy(backend, beta)
    again = started(backend, alpha)
    assert again.pid != first.pid
    assert zygote_pid(backend) not in (None, zygote)


def test_a_killed_homeserver_is_not_taken_for_running_and_starts_again(
    backend: LocalBackend,
) -> None:
    alpha = target(backend, "alpha", set())
    process = started(backend, alpha)
    process.kill()
    poll(lambda: not backend.is_running("alpha"), timeout=10, what="the kill to show")
    assert started(backend, alpha).pid != process.pid


def test_a_zygote_running_other_code_is_replaced(backend: LocalBackend, tmp_path: Path) -> None:
    assert backend.zygote is not None
    old = Zygote(
        backend.zygote.directory,
        python=backend.zygote.python,
        environment=backend.zygote.environment,
        fingerprint="code-of-yesterday",
    )
    old.start()
    old_pid = old._live_pid()
    assert old_pid is not None
    process = started(backend, target(backend, "alpha", set()))
    assert MARKER in process.cmdline()
    assert zygote_pid(backend) not in (None, old_pid)
    poll(lambda: not psutil.pid_exists(old_pid), timeout=15, what="the stale zygote to exit")


def test_a_new_collector_check_period_starts_a_new_zygote(
    backend: LocalBackend, tmp_path: Path
) -> None:
    """C3_SYNAPSE_GC_CHECK_S is part of the zygote's fingerprint: a worker with another period
    replaces the running zygote, and the homeservers it forks get that period; a homeserver
    the old zygote forked keeps serving."""
    taken: set[int] = set()
    alpha = target(backend, "alpha", taken)
    started(backend, alpha)
    first = zygote_pid(backend)
    assert first is not None
    cmdline = psutil.Process(first).cmdline()
    assert cmdline[cmdline.index("--gc-check-period") + 1] == "1.0"

    synapses_own = LocalBackend(tmp_path, gc_check_s=0.1)
    try:
        process = started(synapses_own, target(synapses_own, "beta", taken))
        assert MARKER in process.cmdline()
        second = zygote_pid(synapses_own)
        assert second not in (None, first)
        cmdline = psutil.Process(second).cmdline()
        assert cmdline[cmdline.index("--gc-check-period") + 1] == "0.1"
        poll(lambda: not psutil.pid_exists(first), timeout=15, what="the old zygote to exit")
        assert healthy(backend, alpha)
    finally:
        synapses_own.stop_all()


def test_without_the_zygote_a_homeserver_is_its_own_process(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path, zygote=False)  # C3_SYNAPSE_ZYGOTE=false
    alpha = target(backend, "alpha", set())
    try:
        process = started(backend, alpha)
        assert MARKER not in process.cmdline()
        assert str(backend.tenant_dir("alpha") / "homeserver.yaml") in process.cmdline()
        assert not (tmp_path / "homeservers" / ".zygote" / "zygote.sock").exists()
    finally:
        backend.stop_all()


def test_a_zygote_that_cannot_start_falls_back_to_a_plain_start(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    assert backend.zygote is not None
    backend.zygote.python = "/nonexistent/python3"  # the zygote cannot run at all
    alpha = target(backend, "alpha", set())
    try:
        process = started(backend, alpha)
        assert MARKER not in process.cmdline()
    finally:
        backend.stop_all()


def test_the_zygote_stops_with_the_platform_and_when_its_directory_goes(
    backend: LocalBackend, tmp_path: Path
) -> None:
    assert backend.zygote is not None
    started(backend, target(backend, "alpha", set()))
    pid = zygote_pid(backend)
    assert pid is not None
    assert backend.stop_all() == ["alpha"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    backend.zygote.start()
    pid = zygote_pid(backend)
    assert pid is not None
    backend.zygote.socket_path.unlink()  # as when a test's data directory is removed
    poll(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
        timeout=30,
        what="the orphaned zygote to exit",
    )


def zygote_log(backend: LocalBackend) -> str:
    assert backend.zygote is not None
    return (backend.zygote.directory / "zygote.log").read_text()


def test_the_zygote_warms_up_on_a_config_of_no_tenant_and_each_homeserver_runs_its_own(
    backend: LocalBackend,
) -> None:
    taken: set[int] = set()
    alpha, beta = target(backend, "alpha", taken), target(backend, "beta", taken)
    started(backend, alpha)
    started(backend, beta)
    assert "warmed up on a homeserver config" in zygote_log(backend)
    # Each answers for its own name only, never the warm-up config's (404: a local alias not
    # found; 502: another server's, which it may not ask).
    for one, other in ((alpha, beta), (beta, alpha)):
        for name, status in (
            (one.server_name, 404),
            (other.server_name, 502),
            ("warm-up.invalid", 502),
        ):
            alias = httpx.get(
                backend.upstream_url(one) + f"/_matrix/client/v3/directory/room/%23x:{name}",
                timeout=5,
            )
            assert alias.status_code == status, (one.server_name, name, alias.text)
    # A template compiled in the zygote renders in a homeserver: an SSO error page.
    page = httpx.get(
        backend.upstream_url(alpha) + "/_synapse/client/pick_username/account_details", timeout=5
    )
    assert page.status_code == 400 and "<html" in page.text.lower()


def test_a_warm_up_that_fails_costs_only_speed(backend: LocalBackend, tmp_path: Path) -> None:
    assert backend.zygote is not None
    broken = tmp_path / "broken.yaml"
    broken.write_text("server_name: [not, a, name]\n")
    backend.zygote.warm_up = lambda directory: broken
    process = started(backend, target(backend, "alpha", set()))
    assert MARKER in process.cmdline()  # still forked from the zygote
    assert "warm-up failed" in zygote_log(backend)
