"""``kube_api_server(tmp_path)``: the in-memory Kubernetes API server on loopback, its kubeconfig
(token auth), the kubelet stand-in running real Synapse pods, and the test-only name map."""

from __future__ import annotations

import atexit
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers.kube.kubelet import RESOLVE_DIR, Kubelet
from tests.helpers.kube.rest import (
    Api,
    KubeHttpServer,
    RecordedRequest,
    ServerState,
    write_kubeconfig,
)
from tests.helpers.kube.store import TYPES_BY_KIND, Obj, Store

HOSTS_FILE_VARIABLE = "KUBE_FAKE_HOSTS_FILE"


class LoopbackAddresses:
    """One 127.0.x.y per namespace, checked free on the pod port before it is handed out."""

    def __init__(self, port: int = 8008) -> None:
        self.port = port
        self.by_namespace: dict[str, str] = {}
        self._next = 10 * 256 + secrets.randbelow(200 * 256)
        self._lock = threading.Lock()

    def __call__(self, namespace: str) -> str:
        with self._lock:
            if namespace not in self.by_namespace:
                self.by_namespace[namespace] = self._free()
            return self.by_namespace[namespace]

    def _free(self) -> str:
        while True:
            self._next = self._next + 1 if self._next < 250 * 256 else 10 * 256
            x, y = divmod(self._next, 256)
            if y in (0, 255):
                continue
            ip = f"127.0.{x}.{y}"
            with socket.socket() as probe:
                try:
                    probe.bind((ip, self.port))
                except OSError:
                    continue
            return ip


class KubeApiServer:
    """What a test holds: ``url``, ``kubeconfig``, ``env`` (KUBECONFIG + the resolver for
    subprocesses), ``requests``, ``objects()``, ``kill_pod()``."""

    def __init__(
        self,
        root: Path,
        *,
        terminate_seconds: float = 1.0,
        kubernetes_version: str = "1.33",
        validate: bool = True,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        cluster_domain: str = "cluster.local",
        namespace_prefix: str = "c3-t-",
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.token = secrets.token_urlsafe(24)
        self.store = Store(
            kubernetes_version=kubernetes_version,
            terminate_seconds=terminate_seconds,
            validate=validate,
        )
        self.addresses = LoopbackAddresses()
        self.store.cluster_ip = self.addresses
        self.hosts_file = root / "hosts.json"
        self.kubelet = Kubelet(
            self.store,
            root,
            namespace_prefix=namespace_prefix,
            cluster_domain=cluster_domain,
            hosts_file=self.hosts_file,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
        )
        self.state = ServerState(self.store, self.token, Api(self.store, self.kubelet.log_of))
        self.http = KubeHttpServer(("127.0.0.1", 0), self.state)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.kubeconfig = write_kubeconfig(root / "kubeconfig", self.url, self.token)
        self._thread = threading.Thread(
            target=self.http.serve_forever, name="kube-api-server", daemon=True
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> KubeApiServer:
        self._thread.start()
        self.kubelet.start()
        # Synapses run in their own sessions: stop them even if the block is never left.
        atexit.register(self.kubelet.stop)
        return self

    def stop(self) -> None:
        self.state.stopping.set()
        self.kubelet.stop()
        atexit.unregister(self.kubelet.stop)
        self.http.shutdown()
        self.http.server_close()

    # -- for subprocesses --------------------------------------------------------------------

    @property
    def resolver_env(self) -> dict[str, str]:
        """Give these to a subprocess (after ``with_resolver``) so it resolves cluster DNS
        names of Services to their loopback addresses."""
        return {"PYTHONPATH": str(RESOLVE_DIR), HOSTS_FILE_VARIABLE: str(self.hosts_file)}

    @property
    def env(self) -> dict[str, str]:
        return {**self.resolver_env, "KUBECONFIG": str(self.kubeconfig)}

    def with_resolver(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` plus KUBECONFIG and the resolver, with RESOLVE_DIR first on PYTHONPATH."""
        merged = {**env, **self.env}
        if env.get("PYTHONPATH"):
            merged["PYTHONPATH"] = os.pathsep.join([str(RESOLVE_DIR), env["PYTHONPATH"]])
        return merged

    # -- for assertions ----------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self.state.requests)

    def objects(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Every stored object of ``kind`` ("StatefulSet", …), in ``namespace`` or all."""
        self.store.settle()
        return self.store.list_objects(TYPES_BY_KIND[kind], namespace)[1]

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        return self.store.find(TYPES_BY_KIND[kind], namespace, name)

    def kill_pod(self, namespace: str, pod: str = "synapse-0") -> int:
        """SIGKILL the Synapse of ``namespace``'s pod; returns its pid."""
        return self.kubelet.kill(namespace, pod)

    def pod_process(self, namespace: str, pod: str = "synapse-0") -> Any:
        return self.kubelet.process_of(namespace, pod)

    def pod_log(self, namespace: str, pod: str = "synapse-0", *, previous: bool = False) -> str:
        """What the pod's current (or previous) run printed."""
        return self.kubelet.log_of(namespace, pod, previous=previous) or ""

    def address_of(self, namespace: str) -> str:
        """The loopback address the namespace's Services and pods have."""
        return self.addresses(namespace)

    def drift_as_an_operator(self, namespace: str) -> None:
        """What someone with kubectl (another field manager) does to a tenant's homeserver:
        deletes its Service, edits its ConfigMap, scales its StatefulSet to 0."""
        from lightkube import Client
        from lightkube.config.kubeconfig import KubeConfig
        from lightkube.resources.apps_v1 import StatefulSet
        from lightkube.resources.core_v1 import ConfigMap, Service
        from lightkube.types import PatchType

        kubectl = Client(config=KubeConfig.from_file(str(self.kubeconfig)), field_manager="kubectl")
        kubectl.delete(Service, "synapse", namespace=namespace)
        kubectl.patch(
            ConfigMap, "synapse-config", {"data": {"homeserver.yaml": "server_name: elsewhere\n"}},
            namespace=namespace, patch_type=PatchType.MERGE,
        )  # fmt: skip
        kubectl.patch(
            StatefulSet.Scale, "synapse", {"spec": {"replicas": 0}},
            namespace=namespace, patch_type=PatchType.MERGE,
        )  # fmt: skip


@contextmanager
def kube_api_server(root: Path, **options: Any) -> Iterator[KubeApiServer]:
    """Run the fake API server + kubelet stand-in until the block ends (every Synapse stopped)."""
    server = KubeApiServer(root, **options).start()
    try:
        yield server
    finally:
        server.stop()


__all__ = ["HOSTS_FILE_VARIABLE", "RESOLVE_DIR", "KubeApiServer", "kube_api_server"]
