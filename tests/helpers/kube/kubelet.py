"""The kubelet stand-in: turns each StatefulSet with replicas >= 1 in a tenant namespace into a
real Synapse process (pod ``<name>-0``) with its ConfigMap, Secret and PVC materialised as local
directories (projected ``items`` too; the container's ``PYTHONPATH`` names the local copies of
its mounts, so Synapse imports modules from them), restarts it with back-off when it exits
(restartCount, BackOff events), reports readiness from its HTTP probe, and stops it on
scale-to-0, pod or StatefulSet deletion, and namespace deletion."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.kube.store import TYPES_BY_KIND, ApiStatus, Obj, Store, now

POD, STATEFULSET, EVENT, PVC = (
    TYPES_BY_KIND[k] for k in ("Pod", "StatefulSet", "Event", "PersistentVolumeClaim")
)
CONFIGMAP, SECRET, SERVICE = (TYPES_BY_KIND[k] for k in ("ConfigMap", "Secret", "Service"))
KUBELET = "kubelet"
CONTROLLER = "kube-controller-manager"
# A pod does not get the test process's cluster credentials.
_NOT_INHERITED = ("KUBECONFIG",)
RESOLVE_DIR = Path(__file__).parent / "resolve"


class MountError(Exception):
    """A volume's source (ConfigMap, Secret) is missing: the pod stays ContainerCreating."""


@dataclass
class PodRuntime:
    namespace: str
    statefulset: str
    name: str
    uid: str
    template_hash: str
    root: Path
    image: str
    container: str
    process: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    backoff_until: float = 0.0
    ready: bool = False
    started_at: str = ""
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    last_terminated: Obj | None = None
    probe: tuple[str, int] = ("/health", 8008)
    next_probe: float = 0.0
    events: dict[str, str] = field(default_factory=dict)  # reason -> event name

    @property
    def log_path(self) -> Path:
        return self.root / "container.log"

    @property
    def imports_log(self) -> Path:
        return self.root / "imports.log"


class Kubelet:
    def __init__(
        self,
        store: Store,
        root: Path,
        *,
        namespace_prefix: str = "c3-t-",
        cluster_domain: str = "cluster.local",
        hosts_file: Path,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        python: str = sys.executable,
    ) -> None:
        self.store = store
        self.root = root
        self.namespace_prefix = namespace_prefix
        self.cluster_domain = cluster_domain
        self.hosts_file = hosts_file
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.python = python
        self.pods: dict[tuple[str, str], PodRuntime] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelet-stand-in", daemon=True)
        self._sync_lock = threading.Lock()
        self._hosts: dict[str, str] = {}
        store.on_namespace_gone.append(self._namespace_gone)
        store.namespace_blockers.append(self._has_pods)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._write_hosts()
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)
        for runtime in list(self.pods.values()):
            self._stop_process(runtime)
        self.pods.clear()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.sync()
            except Exception as error:  # noqa: BLE001 -- keep the kubelet alive; show why
                print(f"kubelet stand-in: sync failed: {error!r}", file=sys.stderr)
            self._stopping.wait(0.1)

    # -- the loop ----------------------------------------------------------------------------

    def sync(self) -> None:
        with self._sync_lock:
            self.store.settle()
            _, statefulsets = self.store.list_objects(STATEFULSET, None)
            wanted: dict[tuple[str, str], Obj] = {}
            for sts in statefulsets:
                namespace = sts["metadata"]["namespace"]
                if not namespace.startswith(self.namespace_prefix):
                    continue
                if self.store.namespace_phase(namespace) != "Active":
                    continue
                if int(sts["spec"].get("replicas", 1)) >= 1:
                    wanted[(namespace, sts["metadata"]["name"])] = sts
                else:
                    self._report_statefulset(sts, None)
            for key in [k for k in self.pods if k not in wanted]:
                self._remove_pod(self.pods.pop(key))
                gone_from = self.store.find(STATEFULSET, key[0], key[1])
                if gone_from is not None:
                    self._report_statefulset(gone_from, None)
            for key, sts in wanted.items():
                self._sync_statefulset(key, sts)
            self._write_hosts()

    def _sync_statefulset(self, key: tuple[str, str], sts: Obj) -> None:
        runtime = self.pods.get(key)
        template = sts["spec"]["template"]
        template_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[
            :10
        ]
        if runtime is not None:
            pod = self.store.find(POD, runtime.namespace, runtime.name)
            if (
                pod is None
                or pod["metadata"]["uid"] != runtime.uid
                or runtime.template_hash != template_hash
            ):
                self._remove_pod(runtime)  # deleted by someone, or a new template: a new pod
                runtime = None
        if runtime is None:
            runtime = self._create_pod(sts, template_hash)
            if runtime is None:
                return
            self.pods[key] = runtime
        self._drive(runtime, sts)
        self._report_pod(runtime)
        self._report_statefulset(sts, runtime)

    def _drive(self, runtime: PodRuntime, sts: Obj) -> None:
        process = runtime.process
        if process is None:
            if time.monotonic() >= runtime.backoff_until:
                self._start(runtime, sts)
            return
        code = process.poll()
        if code is None:
            self._probe(runtime)
            return
        runtime.process = None
        runtime.ready = False
        runtime.restart_count += 1
        runtime.last_terminated = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Error" if code else "Completed",
            "startedAt": runtime.started_at,
            "finishedAt": now(),
        }
        delay = min(self.backoff_base * 2 ** (runtime.restart_count - 1), self.backoff_max)
        runtime.backoff_until = time.monotonic() + delay
        message = f"Back-off restarting failed container {runtime.container} in pod {runtime.name}_{runtime.namespace}({runtime.uid})"
        runtime.waiting = ("CrashLoopBackOff", message)
        self._event(runtime, "BackOff", "Warning", message)

    # -- pods --------------------------------------------------------------------------------

    def _create_pod(self, sts: Obj, template_hash: str) -> PodRuntime | None:
        namespace, sts_name = sts["metadata"]["namespace"], sts["metadata"]["name"]
        template = sts["spec"]["template"]
        name = f"{sts_name}-0"
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels.update(
            {
                "statefulset.kubernetes.io/pod-name": name,
                "apps.kubernetes.io/pod-index": "0",
                "controller-revision-hash": f"{sts_name}-{template_hash}",
            }
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "StatefulSet",
                        "name": sts_name,
                        "uid": sts["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {
                **template["spec"],
                "nodeName": "kubelet-stand-in",
                "hostname": name,
                "subdomain": sts["spec"].get("serviceName", ""),
            },
        }
        try:
            created = self.store.create(POD, namespace, pod, CONTROLLER)
        except ApiStatus as error:
            if error.code == 409:  # a pod of an earlier runtime is still there
                self.store.delete(POD, namespace, name)
            return None
        root = self.root / "pods" / namespace / name
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        container = template["spec"]["containers"][0]
        runtime = PodRuntime(
            namespace,
            sts_name,
            name,
            created["metadata"]["uid"],
            template_hash,
            root,
            container.get("image", ""),
            container["name"],
        )
        runtime.probe = _probe_of(container)
        self._event(
            runtime,
            "Scheduled",
            "Normal",
            f"Successfully assigned {namespace}/{name} to kubelet-stand-in",
        )
        return runtime

    def _start(self, runtime: PodRuntime, sts: Obj) -> None:
        spec = sts["spec"]["template"]["spec"]
        container = spec["containers"][0]
        try:
            mounts = self._materialise(runtime, sts)
            command = self._command(runtime, container, mounts)
        except MountError as error:
            runtime.waiting = ("ContainerCreating", str(error))
            runtime.backoff_until = time.monotonic() + 1.0
            self._event(runtime, "FailedMount", "Warning", str(error))
            return
        env = _pod_env(self.hosts_file, runtime.imports_log)
        container_env = self._container_env(runtime.namespace, container)
        if "PYTHONPATH" in container_env:
            # The container's own PYTHONPATH replaces the test process's (a pod does not
            # inherit it), its mount paths made local; the name resolver stays first.
            entries = container_env.pop("PYTHONPATH").split(os.pathsep)
            env["PYTHONPATH"] = os.pathsep.join(
                [str(RESOLVE_DIR), *(str(_local_path(e, mounts)) for e in entries if e)]
            )
        env.update(container_env)
        if runtime.log_path.exists():  # like `kubectl logs --previous`: the last run's log
            runtime.log_path.replace(runtime.root / "previous.log")
        with runtime.log_path.open("wb") as log:
            runtime.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=runtime.root,
                start_new_session=True,
            )
        runtime.started_at = now()
        runtime.waiting = None
        runtime.next_probe = 0.0
        self._event(runtime, "Started", "Normal", f"Started container {runtime.container}")

    def _materialise(self, runtime: PodRuntime, sts: Obj) -> dict[str, Path]:
        """Write each mounted volume to a local directory; returns mountPath -> directory."""
        spec = sts["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates") or []}
        mounts: dict[str, Path] = {}
        rewritten: list[Path] = []
        for mount in spec["containers"][0].get("volumeMounts") or []:
            name, path = mount["name"], mount["mountPath"].rstrip("/")
            volume = volumes.get(name, {})
            if name in claims:
                directory = self._claim(runtime, sts, name)
            elif "configMap" in volume or "secret" in volume:
                directory = runtime.root / "volumes" / name
                self._write_volume(runtime.namespace, volume, directory)
                rewritten.append(directory)
            elif "persistentVolumeClaim" in volume:
                directory = (
                    self.root
                    / "volumes"
                    / runtime.namespace
                    / volume["persistentVolumeClaim"]["claimName"]
                )
            else:  # emptyDir and anything else: a directory that lives as long as the pod
                directory = runtime.root / "volumes" / name
            directory.mkdir(parents=True, exist_ok=True)
            mounts[path] = directory / mount["subPath"] if mount.get("subPath") else directory
        for directory in rewritten:
            _rewrite_mount_paths(directory, mounts)
        return mounts

    def _write_volume(self, namespace: str, volume: Obj, directory: Path) -> None:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        if "configMap" in volume:
            source, rtype, name = (
                volume["configMap"],
                CONFIGMAP,
                volume["configMap"].get("name", ""),
            )
        else:
            source, rtype, name = volume["secret"], SECRET, volume["secret"].get("secretName", "")
        obj = self.store.find(rtype, namespace, name)
        if obj is None:
            if source.get("optional"):
                return
            raise MountError(
                f'MountVolume.SetUp failed for volume "{volume["name"]}" : {rtype.plural[:-1]} "{name}" not found'
            )
        files: dict[str, bytes] = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        if rtype is SECRET:
            files = {k: base64.b64decode(v) for k, v in files.items()}
        files.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        items = source.get("items")
        if items:
            files = {item["path"]: files[item["key"]] for item in items if item["key"] in files}
        for relative, content in files.items():
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(0o600)

    def _claim(self, runtime: PodRuntime, sts: Obj, template_name: str) -> Path:
        """The PVC of a volumeClaimTemplate: an object in the API and a directory that
        outlives pods (deleted only with the namespace)."""
        claim = f"{template_name}-{runtime.name}"
        if self.store.find(PVC, runtime.namespace, claim) is None:
            template = next(
                c
                for c in sts["spec"]["volumeClaimTemplates"]
                if c["metadata"]["name"] == template_name
            )
            labels = dict(template["metadata"].get("labels") or {})
            pvc = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": runtime.namespace, "labels": labels},
                "spec": template.get("spec") or {},
            }
            try:
                self.store.create(PVC, runtime.namespace, pvc, CONTROLLER)
            except ApiStatus as error:
                raise MountError(f"persistentvolumeclaim {claim}: {error.message}") from None
            self.store.set_status(
                PVC,
                runtime.namespace,
                claim,
                {
                    "phase": "Bound",
                    "accessModes": (template.get("spec") or {}).get("accessModes") or [],
                    "capacity": ((template.get("spec") or {}).get("resources") or {}).get(
                        "requests"
                    )
                    or {},
                },
            )
        return self.root / "volumes" / runtime.namespace / claim

    def _command(self, runtime: PodRuntime, container: Obj, mounts: dict[str, Path]) -> list[str]:
        words = [*(container.get("command") or []), *(container.get("args") or [])]
        config = None
        for i, word in enumerate(words[:-1]):
            if word in ("--config-path", "-c"):
                config = words[i + 1]
        if config is None:
            raise MountError(
                "the container's command has no --config-path (the stand-in runs Synapse only)"
            )
        local = _local_path(config, mounts)
        try:
            homeserver = yaml.safe_load(local.read_text())
        except (OSError, yaml.YAMLError):
            homeserver = None  # Synapse will say what is wrong, and the pod crash-loops
        if isinstance(homeserver, dict):
            ip = self.pod_ip(runtime.namespace)
            for listener in homeserver.get("listeners") or []:
                listener["bind_addresses"] = [ip]
            local.write_text(yaml.safe_dump(homeserver, sort_keys=True))
        return [self.python, "-m", "synapse.app.homeserver", "--config-path", str(local)]

    def _container_env(self, namespace: str, container: Obj) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            ref = item.get("valueFrom") or {}
            if "secretKeyRef" in ref:
                obj = self.store.find(SECRET, namespace, ref["secretKeyRef"]["name"]) or {}
                raw = (obj.get("data") or {}).get(ref["secretKeyRef"]["key"])
                if raw is not None:
                    env[item["name"]] = base64.b64decode(raw).decode()
            elif "configMapKeyRef" in ref:
                obj = self.store.find(CONFIGMAP, namespace, ref["configMapKeyRef"]["name"]) or {}
                value = (obj.get("data") or {}).get(ref["configMapKeyRef"]["key"])
                if value is not None:
                    env[item["name"]] = value
        return env

    def _probe(self, runtime: PodRuntime) -> None:
        if time.monotonic() < runtime.next_probe:
            return
        runtime.next_probe = time.monotonic() + 0.25
        path, port = runtime.probe
        connection = http.client.HTTPConnection(self.pod_ip(runtime.namespace), port, timeout=0.5)
        try:
            connection.request("GET", path)
            runtime.ready = connection.getresponse().status == 200
        except OSError:
            runtime.ready = False
        finally:
            connection.close()

    def _remove_pod(self, runtime: PodRuntime) -> None:
        self._stop_process(runtime)
        pod = self.store.find(POD, runtime.namespace, runtime.name)
        if pod is not None and pod["metadata"]["uid"] == runtime.uid:
            try:
                self.store.delete(POD, runtime.namespace, runtime.name)
            except ApiStatus:
                pass
        shutil.rmtree(runtime.root, ignore_errors=True)

    @staticmethod
    def _stop_process(runtime: PodRuntime) -> None:
        process, runtime.process = runtime.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _has_pods(self, namespace: str) -> bool:
        """A terminating namespace waits for its pods (sync stops them: it is not Active)."""
        return any(key[0] == namespace for key in list(self.pods))

    def _namespace_gone(self, namespace: str) -> None:
        """Called (under the store lock) as a terminated namespace's objects go: its PVCs."""
        shutil.rmtree(self.root / "volumes" / namespace, ignore_errors=True)

    # -- what the API shows ------------------------------------------------------------------

    def _report_pod(self, runtime: PodRuntime) -> None:
        running = runtime.process is not None
        state: Obj
        if running:
            state = {"running": {"startedAt": runtime.started_at}}
        else:
            reason, message = runtime.waiting or ("ContainerCreating", "")
            state = {
                "waiting": {"reason": reason, "message": message} if message else {"reason": reason}
            }
        status_word = "True" if runtime.ready else "False"
        status: Obj = {
            "phase": "Running" if running or runtime.restart_count else "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": status_word},
                {"type": "Ready", "status": status_word},
            ],
            "hostIP": "127.0.0.1",
            "podIP": self.pod_ip(runtime.namespace),
            "podIPs": [{"ip": self.pod_ip(runtime.namespace)}],
            "containerStatuses": [
                {
                    "name": runtime.container,
                    "image": runtime.image,
                    "imageID": "",
                    "ready": runtime.ready,
                    "started": running,
                    "restartCount": runtime.restart_count,
                    "state": state,
                    "lastState": {"terminated": runtime.last_terminated}
                    if runtime.last_terminated
                    else {},
                    **(
                        {"containerID": f"stand-in://{runtime.process.pid}"}
                        if runtime.process
                        else {}
                    ),
                }
            ],
        }
        self.store.set_status(POD, runtime.namespace, runtime.name, status)

    def _report_statefulset(self, sts: Obj, runtime: PodRuntime | None) -> None:
        metadata = sts["metadata"]
        ready = 1 if runtime is not None and runtime.ready else 0
        replicas = 1 if runtime is not None else 0
        revision = f"{metadata['name']}-{runtime.template_hash}" if runtime else None
        status: Obj = {"observedGeneration": metadata.get("generation", 1), "replicas": replicas}
        # Like the real controller, zero counts are left out.
        for key, value in (
            ("readyReplicas", ready),
            ("availableReplicas", ready),
            ("currentReplicas", replicas),
            ("updatedReplicas", replicas),
        ):
            if value:
                status[key] = value
        if revision:
            status.update(currentRevision=revision, updateRevision=revision)
        self.store.set_status(STATEFULSET, metadata["namespace"], metadata["name"], status)

    def _event(self, runtime: PodRuntime, reason: str, kind: str, message: str) -> None:
        name = runtime.events.get(reason)
        existing = self.store.find(EVENT, runtime.namespace, name) if name else None
        try:
            if existing is not None and name is not None:
                patch = {
                    "count": int(existing.get("count", 1)) + 1,
                    "lastTimestamp": now(),
                    "message": message,
                }
                self.store.patch(EVENT, runtime.namespace, name, patch, KUBELET)
                return
            name = f"{runtime.name}.{hashlib.sha256(f'{runtime.uid}{reason}'.encode()).hexdigest()[:16]}"
            runtime.events[reason] = name
            event = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": runtime.namespace},
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": runtime.name,
                    "namespace": runtime.namespace,
                    "uid": runtime.uid,
                    "fieldPath": f"spec.containers{{{runtime.container}}}",
                },
                "reason": reason,
                "message": message,
                "type": kind,
                "count": 1,
                "firstTimestamp": now(),
                "lastTimestamp": now(),
                "source": {"component": KUBELET, "host": "kubelet-stand-in"},
                "reportingComponent": KUBELET,
            }
            self.store.create(EVENT, runtime.namespace, event, KUBELET)
        except ApiStatus:
            pass  # the namespace is going away

    # -- addresses and names -----------------------------------------------------------------

    def pod_ip(self, namespace: str) -> str:
        assert self.store.cluster_ip is not None
        return self.store.cluster_ip(namespace)

    def _write_hosts(self) -> None:
        """The test-only name map: each Service's cluster DNS names → its loopback address."""
        _, services = self.store.list_objects(SERVICE, None)
        hosts: dict[str, str] = {}
        for service in services:
            name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
            ip = service["spec"].get("clusterIP") or self.pod_ip(namespace)
            for host in (
                f"{name}.{namespace}.svc.{self.cluster_domain}",
                f"{name}.{namespace}.svc",
                f"{name}.{namespace}",
            ):
                hosts[host] = ip
        for runtime in list(self.pods.values()):
            owner = self.store.find(STATEFULSET, runtime.namespace, runtime.statefulset) or {}
            headless = (owner.get("spec") or {}).get("serviceName")
            if headless:
                hosts[
                    f"{runtime.name}.{headless}.{runtime.namespace}.svc.{self.cluster_domain}"
                ] = self.pod_ip(runtime.namespace)
        if hosts != self._hosts or not self.hosts_file.exists():
            temporary = self.hosts_file.with_suffix(".tmp")
            temporary.write_text(json.dumps(hosts, indent=1, sort_keys=True))
            temporary.replace(self.hosts_file)
            self._hosts = hosts

    # -- for tests ---------------------------------------------------------------------------

    def kill(self, namespace: str, pod: str = "synapse-0") -> int:
        """SIGKILL the pod's process (a crash): the stand-in restarts it with back-off."""
        runtime = next(
            r for r in list(self.pods.values()) if (r.namespace, r.name) == (namespace, pod)
        )
        assert runtime.process is not None, f"{namespace}/{pod} has no running process"
        pid = runtime.process.pid
        os.kill(pid, signal.SIGKILL)
        return pid

    def process_of(self, namespace: str, pod: str = "synapse-0") -> subprocess.Popen[bytes] | None:
        for runtime in list(self.pods.values()):
            if (runtime.namespace, runtime.name) == (namespace, pod):
                return runtime.process
        return None

    def imported_from(self, namespace: str, module: str, pod: str = "synapse-0") -> Path | None:
        """The file the pod's current process imported ``module`` from (None: not yet)."""
        for runtime in list(self.pods.values()):
            if (runtime.namespace, runtime.name) != (namespace, pod):
                continue
            if not runtime.imports_log.exists():
                return None
            for line in runtime.imports_log.read_text().splitlines():
                name, _, origin = line.partition(" ")
                if name == module:
                    return Path(origin)
        return None

    def pod_volume(self, namespace: str, volume: str, pod: str = "synapse-0") -> Path | None:
        """The local directory standing in for one of the pod's volumes (ConfigMap, Secret,
        emptyDir), as the process sees it."""
        for runtime in list(self.pods.values()):
            if (runtime.namespace, runtime.name) == (namespace, pod):
                return runtime.root / "volumes" / volume
        return None

    def log_of(self, namespace: str, pod: str, *, previous: bool = False) -> str | None:
        """The output of the pod's current (or previous) run of its container."""
        for runtime in list(self.pods.values()):
            if (runtime.namespace, runtime.name) != (namespace, pod):
                continue
            path = runtime.root / "previous.log" if previous else runtime.log_path
            return path.read_text(errors="replace") if path.exists() else ""
        return None


def _pod_env(hosts_file: Path, imports_log: Path) -> dict[str, str]:
    """The test process's environment, without its kubeconfig, and with the name resolver:
    in a cluster, a pod resolves Service names (e.g. a database Service) too. The resolver
    also notes where the C3 packages are imported from (``Kubelet.imported_from``)."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(RESOLVE_DIR)]
    env["PYTHONPATH"] = os.pathsep.join([str(RESOLVE_DIR), *paths])
    env["KUBE_FAKE_HOSTS_FILE"] = str(hosts_file)
    env["KUBE_FAKE_IMPORTS_LOG"] = str(imports_log)
    return env


def _probe_of(container: Obj) -> tuple[str, int]:
    """Readiness comes from the container's readinessProbe httpGet (named port resolved)."""
    probe = (container.get("readinessProbe") or container.get("startupProbe") or {}).get(
        "httpGet"
    ) or {}
    port: Any = probe.get("port", 8008)
    if isinstance(port, str) and not port.isdigit():
        port = next(
            (p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port),
            8008,
        )
    return probe.get("path", "/health"), int(port)


def _local_path(path: str, mounts: dict[str, Path]) -> Path:
    for mount in sorted(mounts, key=len, reverse=True):
        if path == mount or path.startswith(mount + "/"):
            return Path(str(mounts[mount]) + path[len(mount) :])
    raise MountError(f"{path} is not under any volume mount")


def _rewrite_mount_paths(directory: Path, mounts: dict[str, Path]) -> None:
    """In the text files of a ConfigMap/Secret volume, the container paths (``/config/…``,
    ``/secrets/…``, ``/data/…``) become the local directories that stand in for them."""
    pattern = re.compile(
        r"(?<![\w.:/-])("
        + "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
        + r")(?![\w.-])"
    )
    for file in directory.rglob("*"):
        if not file.is_file():
            continue
        try:
            text = file.read_text()
        except UnicodeDecodeError:
            continue
        replaced = pattern.sub(lambda m: str(mounts[m.group(1)]), text)
        if replaced != text:
            file.write_text(replaced)
