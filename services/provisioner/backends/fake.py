"""Fake backend: per tenant a stand-in homeserver process (``provisioner.fake_homeserver``)
instead of Synapse, for lifecycle load and crash tests and the provisioning-rate benchmark.

It runs under the local backend's process discipline (detached, pid file written by the
launcher, identity by command line), only the program differs, so crash tests exercise the
real start/stop/pid code. Failure injection (C3_FAKE_BACKEND_FAIL / C3_FAKE_BACKEND_CRASH)
exists here only.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterable
from pathlib import Path

from platform_core.errors import TemporaryError
from provisioner.backends.base import HomeserverTarget
from provisioner.backends.local import LocalBackend
from provisioner.synapse_config import write_if_changed

CONFIG_NAME = "fake-homeserver.json"


class FakeBackend(LocalBackend):
    name = "fake"

    def __init__(
        self,
        data_dir: Path,
        *,
        boot_s: float = 0.0,
        fail: Iterable[str] = (),
        crash: Iterable[str] = (),
        python: str | None = None,
    ) -> None:
        super().__init__(data_dir, python=python, zygote=False)  # its own program, not Synapse
        self.boot_s = boot_s
        self.fail = frozenset(fail)
        self.crash = frozenset(crash)

    def _config_path(self, tenant_id: str) -> Path:
        return self.tenant_dir(tenant_id) / CONFIG_NAME

    def _program(self, config: Path) -> list[str]:
        return [self.python, "-m", "provisioner.fake_homeserver", str(config)]

    def render(self, target: HomeserverTarget) -> bool:
        if target.port is None:
            raise ValueError("fake homeservers need a port")
        directory = self.tenant_dir(target.tenant_id)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = {
            "server_name": target.server_name,
            "bind": self.bind,
            "port": target.port,
            "registration_shared_secret": target.secrets.registration_shared_secret,
            "boot_s": self.boot_s,
            # Unused by the stand-in, but a plan or settings change must change its config as
            # it would a Synapse's, so reconcile and reconfigure behave the same on both.
            "limits": target.limits,
            "settings": target.settings,
        }
        return write_if_changed(
            self._config_path(target.tenant_id), json.dumps(config, sort_keys=True) + "\n"
        )

    def start(self, target: HomeserverTarget) -> None:
        server_name = target.server_name.lower()
        names = {server_name, server_name.split(".", 1)[0]}
        if names & self.crash:
            # A poison task that takes its worker down with it, every time (kill -9).
            os.kill(os.getpid(), signal.SIGKILL)
        if names & self.fail:
            raise TemporaryError(f"{target.server_name}: start fails (C3_FAKE_BACKEND_FAIL)")
        super().start(target)


def names(setting: str) -> list[str]:
    """The names in a comma-separated setting such as C3_FAKE_BACKEND_FAIL."""
    return [name.strip().lower() for name in setting.split(",") if name.strip()]
