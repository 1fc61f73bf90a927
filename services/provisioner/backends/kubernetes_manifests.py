"""The Kubernetes objects of one tenant's homeserver, as typed lightkube resources.

Pure functions of the tenant (``HomeserverTarget``) and the platform's settings: no API calls, so
the same objects are applied by ``provisioner.backends.kubernetes``, validated offline against the
Kubernetes schemas by the tests, and counted by the benchmark. ``homeserver.yaml`` comes from the
same renderer as the local backend's (``provisioner.synapse_config``), laid out for the pod:
config under ``/config`` (ConfigMap), secrets under ``/secrets`` (Secret), data under ``/data``
(the StatefulSet's volume claim). No secret is in the ConfigMap: each is a file of the Secret
that ``homeserver.yaml`` names with Synapse's ``*_path`` options (the application service's
registration, which holds its tokens, too), and the database password reaches libpq as
``PGPASSWORD`` from the Secret. The confinement module (``c3_synapse``) reaches the stock Synapse
image as source files: keys of the ConfigMap projected to ``/modules/c3_synapse/`` with
``PYTHONPATH=/modules``. Synapse's metrics listener is the pod's and the Service's ``metrics``
port, which only the platform's namespace (and the monitoring one, if set) may reach.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import importlib.util
import re
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import yaml
from lightkube.models.apps_v1 import StatefulSetSpec
from lightkube.models.core_v1 import (
    Capabilities,
    ConfigMapVolumeSource,
    Container,
    ContainerPort,
    EmptyDirVolumeSource,
    EnvVar,
    EnvVarSource,
    HTTPGetAction,
    KeyToPath,
    LimitRangeItem,
    LimitRangeSpec,
    PersistentVolumeClaim,
    PersistentVolumeClaimSpec,
    PodSecurityContext,
    PodSpec,
    PodTemplateSpec,
    Probe,
    ResourceQuotaSpec,
    ResourceRequirements,
    SeccompProfile,
    SecretKeySelector,
    SecretVolumeSource,
    SecurityContext,
    ServicePort,
    ServiceSpec,
    Volume,
    VolumeMount,
    VolumeResourceRequirements,
)
from lightkube.models.meta_v1 import LabelSelector, LabelSelectorRequirement, ObjectMeta
from lightkube.models.networking_v1 import (
    IPBlock,
    NetworkPolicyEgressRule,
    NetworkPolicyIngressRule,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicySpec,
)
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import (
    ConfigMap,
    LimitRange,
    Namespace,
    ResourceQuota,
    Secret,
    Service,
)
from lightkube.resources.networking_v1 import NetworkPolicy

from platform_core.errors import PermanentError
from platform_core.homeserver_settings import FederationMode, federation_mode
from platform_core.outbound import OUTBOUND_BLOCKED_NETWORKS
from platform_core.settings import KUBERNETES_SYNAPSE_METRICS_PORT, Settings
from provisioner.backends.base import HomeserverTarget, spec_for
from provisioner.malloc import DEBIAN_JEMALLOC_PRELOAD, JEMALLOC_CONF
from provisioner.synapse_config import (
    APPSERVICE_FILE,
    FileLayout,
    render_appservice_registration,
    render_homeserver_config,
    render_log_config,
)

NAMESPACE_PREFIX = "c3-t-"
NAME = "synapse"  # the StatefulSet, its Service, its container
CONFIG_MAP = "synapse-config"
SECRET = "synapse-secrets"
DATA_CLAIM = "data"
PORT = 8008
# The container's and the Service's ``metrics`` port (C3_SYNAPSE_METRICS_PORT overrides it).
METRICS_PORT = KUBERNETES_SYNAPSE_METRICS_PORT
# Where the confinement module's source is mounted; the container's PYTHONPATH.
MODULES_DIR = "/modules"
MODULE_PACKAGE = "c3_synapse"
# Synapse's image runs as this user and group (its Dockerfile's default UID/GID).
SYNAPSE_UID = 991
CONFIG_HASH_ANNOTATION = "c3.io/config-hash"

LAYOUT = FileLayout(
    config_dir=Path("/config"),
    secrets_dir=Path("/secrets"),
    data_dir=Path("/data"),
    log_config_name="log.yaml",
    log_dir=None,  # standard error: the pod's log
)
CONFIG_PATH = "/config/homeserver.yaml"

# Synapse options holding a secret → the Secret's file that holds it instead (``<option>_path``).
SECRET_FILE_OPTIONS = (
    "registration_shared_secret",
    "macaroon_secret_key",
    "form_secret",
    "turn_shared_secret",
)
OIDC_CLIENT_SECRET_FILE = "oidc_client_secret"
DATABASE_PASSWORD_KEY = "database_password"

# Plans without these limits get these (the homeserver pod's requests/limits, its volume).
DEFAULT_CPU_MILLICORES = 1000
DEFAULT_MEMORY_MIB = 1024
DEFAULT_STORAGE_GIB = 10

TenantObject = (
    Namespace
    | ResourceQuota
    | LimitRange
    | NetworkPolicy
    | Secret
    | ConfigMap
    | Service
    | StatefulSet
)

_LABEL_VALUE = re.compile(r"[^A-Za-z0-9._-]+")


def namespace_name(tenant_id: str) -> str:
    return NAMESPACE_PREFIX + tenant_id


def service_host(tenant_id: str, cluster_domain: str) -> str:
    return f"{NAME}.{namespace_name(tenant_id)}.svc.{cluster_domain}"


def label_value(value: str) -> str:
    """A string as a label value: at most 63 of [A-Za-z0-9._-], alphanumeric at both ends."""
    return _LABEL_VALUE.sub("-", value)[:63].strip("-._") or "none"


@dataclass(frozen=True)
class Resources:
    """The homeserver's share of the cluster, from the plan's limits."""

    cpu_millicores: int
    memory_mib: int
    storage_gib: int

    @classmethod
    def of(cls, limits: dict[str, Any]) -> Resources:
        return cls(
            cpu_millicores=int(limits.get("homeserver_cpu_millicores") or DEFAULT_CPU_MILLICORES),
            memory_mib=int(limits.get("homeserver_memory_mib") or DEFAULT_MEMORY_MIB),
            storage_gib=int(limits.get("homeserver_storage_gib") or DEFAULT_STORAGE_GIB),
        )

    @property
    def cpu_request(self) -> str:
        # A quarter is reserved; the pod may burst to its limit when the node has room.
        return f"{max(100, self.cpu_millicores // 4)}m"


@dataclass(frozen=True)
class TenantManifests:
    """Every object of one tenant, in the order they are applied (each one's dependencies
    first; the StatefulSet last, when its config, secrets and Service exist)."""

    namespace: Namespace
    secret: Secret
    config_map: ConfigMap
    service: Service
    network_policy: NetworkPolicy
    resource_quota: ResourceQuota
    limit_range: LimitRange
    stateful_set: StatefulSet

    def in_order(self) -> list[TenantObject]:
        return [
            self.namespace,
            self.resource_quota,
            self.limit_range,
            self.network_policy,
            self.secret,
            self.config_map,
            self.service,
            self.stateful_set,
        ]


# On every object of a tenant's (and so on its pod): how the backend lists them all at once.
MANAGED_BY = {"app.kubernetes.io/managed-by": "c3"}


def labels(settings: Settings, target: HomeserverTarget) -> dict[str, str]:
    return {
        **MANAGED_BY,
        "c3.io/tenant": target.tenant_id,
        "c3.io/plan": label_value(target.plan_code or "none"),
        "c3.io/release": settings.kubernetes_release,
    }


@functools.cache
def module_files() -> dict[str, str]:
    """The confinement module's source files as ConfigMap keys (``c3_synapse.<file>``: a key
    has no ``/``); ``module_items`` projects them to ``c3_synapse/<file>`` under the mount."""
    found = importlib.util.find_spec(MODULE_PACKAGE)  # located, not imported (needs Synapse)
    if found is None or found.origin is None:
        raise PermanentError(f"the {MODULE_PACKAGE} package is not installed beside the worker")
    return {
        f"{MODULE_PACKAGE}.{source.name}": source.read_text()
        for source in sorted(Path(found.origin).parent.glob("*.py"))
    }


def module_items() -> list[KeyToPath]:
    return [
        KeyToPath(key=key, path=f"{MODULE_PACKAGE}/{key.removeprefix(MODULE_PACKAGE + '.')}")
        for key in module_files()
    ]


def homeserver_files(
    target: HomeserverTarget, *, metrics_port: int = METRICS_PORT
) -> tuple[dict[str, str], dict[str, str]]:
    """The ConfigMap's files and the Secret's files, rendered by the local backend's code;
    every secret value moved from ``homeserver.yaml`` to a file of its own."""
    spec = spec_for(
        target,
        port=PORT,
        bind_address="0.0.0.0",
        data_dir=LAYOUT.data_dir,
        metrics_port=metrics_port,
        metrics_bind_address="0.0.0.0",
        layout=LAYOUT,
    )
    # A copy: the rendered config shares dicts with the target (its database section).
    config = copy.deepcopy(render_homeserver_config(spec, target.secrets))
    secret_files = {"signing.key": target.secrets.signing_key + "\n"}
    for option in SECRET_FILE_OPTIONS:
        if option in config:
            secret_files[option] = str(config.pop(option))
            config[f"{option}_path"] = str(LAYOUT.secrets_dir / option)
    for provider in config.get("oidc_providers") or []:
        secret_files[OIDC_CLIENT_SECRET_FILE] = str(provider.pop("client_secret"))
        provider["client_secret_path"] = str(LAYOUT.secrets_dir / OIDC_CLIENT_SECRET_FILE)
    database_args = (config.get("database") or {}).get("args") or {}
    if "password" in database_args:
        secret_files[DATABASE_PASSWORD_KEY] = str(database_args.pop("password"))
    if spec.appservice_url is not None:
        secret_files[APPSERVICE_FILE] = render_appservice_registration(spec, target.secrets)
    config_files = {
        "homeserver.yaml": yaml.safe_dump(config, sort_keys=True),
        "log.yaml": yaml.safe_dump(render_log_config(LAYOUT.log_dir), sort_keys=True),
        **module_files(),
    }
    return config_files, secret_files


def config_hash(config_files: dict[str, str], secret_files: dict[str, str]) -> str:
    """Changes whenever a file the homeserver reads at start changes: as a pod template
    annotation it rolls the pod onto the new config."""
    digest = hashlib.sha256()
    for files in (config_files, secret_files):
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()[:32]


def build(settings: Settings, target: HomeserverTarget, *, replicas: int = 1) -> TenantManifests:
    namespace = namespace_name(target.tenant_id)
    tenant_labels = labels(settings, target)
    resources = Resources.of(target.limits)
    metrics_port = settings.homeserver_metrics_port or METRICS_PORT
    config_files, secret_files = homeserver_files(target, metrics_port=metrics_port)

    def meta(name: str) -> ObjectMeta:
        return ObjectMeta(name=name, namespace=namespace, labels=dict(tenant_labels))

    return TenantManifests(
        namespace=Namespace(
            metadata=ObjectMeta(
                name=namespace,
                labels={
                    **tenant_labels,
                    # The pod satisfies the restricted Pod Security Standard; enforce it.
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
            )
        ),
        secret=Secret(
            metadata=meta(SECRET),
            type="Opaque",
            data={k: base64.b64encode(v.encode()).decode() for k, v in secret_files.items()},
        ),
        config_map=ConfigMap(metadata=meta(CONFIG_MAP), data=config_files),
        service=Service(
            metadata=meta(NAME),
            spec=ServiceSpec(
                type="ClusterIP",
                selector=_pod_selector(target),
                ports=[
                    ServicePort(name="client", port=PORT, targetPort="client", protocol="TCP"),
                    # Prometheus scrapes <Service>:<metrics port> (GET /metrics/homeservers).
                    ServicePort(
                        name="metrics", port=metrics_port, targetPort="metrics", protocol="TCP"
                    ),
                ],
            ),
        ),
        network_policy=_network_policy(settings, target, meta(NAME)),
        resource_quota=_resource_quota(resources, meta("homeserver")),
        limit_range=_limit_range(resources, meta("homeserver")),
        stateful_set=_stateful_set(
            settings,
            target,
            meta(NAME),
            resources,
            replicas=replicas,
            config_hash=config_hash(config_files, secret_files),
            metrics_port=metrics_port,
        ),
    )


def _pod_selector(target: HomeserverTarget) -> dict[str, str]:
    return {"app.kubernetes.io/name": NAME, "c3.io/tenant": target.tenant_id}


def _health_probe(*, period_s: int, failures: int) -> Probe:
    return Probe(
        httpGet=HTTPGetAction(path="/health", port="client"),
        periodSeconds=period_s,
        timeoutSeconds=5,
        failureThreshold=failures,
    )


def _jemalloc_env(settings: Settings) -> list[EnvVar]:
    if not settings.synapse_jemalloc:
        return []
    return [
        EnvVar(name="LD_PRELOAD", value=DEBIAN_JEMALLOC_PRELOAD),
        EnvVar(name="MALLOC_CONF", value=JEMALLOC_CONF),
    ]


def _stateful_set(
    settings: Settings,
    target: HomeserverTarget,
    metadata: ObjectMeta,
    resources: Resources,
    *,
    replicas: int,
    config_hash: str,
    metrics_port: int,
) -> StatefulSet:
    limits = {"cpu": f"{resources.cpu_millicores}m", "memory": f"{resources.memory_mib}Mi"}
    container = Container(
        name=NAME,
        image=settings.kubernetes_synapse_image,
        imagePullPolicy="IfNotPresent",
        # Synapse itself, not the image's start.py (which rewrites files and switches users):
        # the root filesystem stays read-only and the pod never needs root.
        command=["python", "-m", "synapse.app.homeserver"],
        args=["--config-path", CONFIG_PATH],
        env=[
            # libpq reads the database password from the environment: not in any config file.
            EnvVar(
                name="PGPASSWORD",
                valueFrom=EnvVarSource(
                    secretKeyRef=SecretKeySelector(
                        name=SECRET, key=DATABASE_PASSWORD_KEY, optional=True
                    )
                ),
            ),
            # The confinement module (homeserver.yaml's ``modules:``) from the modules volume.
            EnvVar(name="PYTHONPATH", value=MODULES_DIR),
            # The modules volume is read-only: no __pycache__ beside the sources.
            EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"),
            # C3_SYNAPSE_JEMALLOC: the image's jemalloc (its start.py would preload it; we
            # bypass start.py).
            *_jemalloc_env(settings),
        ],
        ports=[
            ContainerPort(name="client", containerPort=PORT, protocol="TCP"),
            ContainerPort(name="metrics", containerPort=metrics_port, protocol="TCP"),
        ],
        # Migrations on a large database may take minutes: up to 10 before liveness applies.
        startupProbe=_health_probe(period_s=5, failures=120),
        readinessProbe=_health_probe(period_s=10, failures=3),
        livenessProbe=_health_probe(period_s=30, failures=3),
        resources=ResourceRequirements(
            requests={"cpu": resources.cpu_request, "memory": limits["memory"]}, limits=limits
        ),
        securityContext=SecurityContext(
            runAsNonRoot=True,
            allowPrivilegeEscalation=False,
            readOnlyRootFilesystem=True,
            capabilities=Capabilities(drop=["ALL"]),
        ),
        volumeMounts=[
            VolumeMount(name="config", mountPath="/config", readOnly=True),
            VolumeMount(name="secrets", mountPath="/secrets", readOnly=True),
            VolumeMount(name="modules", mountPath=MODULES_DIR, readOnly=True),
            VolumeMount(name=DATA_CLAIM, mountPath="/data"),
            # Synapse spools uploads and thumbnails through the temporary directory.
            VolumeMount(name="tmp", mountPath="/tmp"),
        ],
    )
    pod_labels = {**(metadata.labels or {}), **_pod_selector(target)}
    claim = PersistentVolumeClaim(
        metadata=ObjectMeta(name=DATA_CLAIM, labels=dict(metadata.labels or {})),
        spec=PersistentVolumeClaimSpec(
            accessModes=["ReadWriteOnce"],
            storageClassName=settings.kubernetes_storage_class,
            resources=_volume_resources(f"{resources.storage_gib}Gi"),
        ),
    )
    return StatefulSet(
        metadata=metadata,
        spec=StatefulSetSpec(
            replicas=replicas,
            serviceName=NAME,
            selector=LabelSelector(matchLabels=_pod_selector(target)),
            template=PodTemplateSpec(
                metadata=ObjectMeta(
                    labels=pod_labels, annotations={CONFIG_HASH_ANNOTATION: config_hash}
                ),
                spec=PodSpec(
                    containers=[container],
                    # The homeserver never talks to the Kubernetes API.
                    automountServiceAccountToken=False,
                    enableServiceLinks=False,
                    terminationGracePeriodSeconds=30,
                    securityContext=PodSecurityContext(
                        runAsNonRoot=True,
                        runAsUser=SYNAPSE_UID,
                        runAsGroup=SYNAPSE_UID,
                        fsGroup=SYNAPSE_UID,
                        seccompProfile=SeccompProfile(type="RuntimeDefault"),
                    ),
                    volumes=[
                        Volume(
                            name="config",
                            configMap=ConfigMapVolumeSource(name=CONFIG_MAP, defaultMode=0o444),
                        ),
                        Volume(
                            name="modules",
                            configMap=ConfigMapVolumeSource(
                                name=CONFIG_MAP, defaultMode=0o444, items=module_items()
                            ),
                        ),
                        Volume(
                            name="secrets",
                            secret=SecretVolumeSource(secretName=SECRET, defaultMode=0o440),
                        ),
                        Volume(name="tmp", emptyDir=EmptyDirVolumeSource(sizeLimit="1Gi")),
                    ],
                ),
            ),
            volumeClaimTemplates=[claim],
        ),
    )


def _volume_resources(storage: str) -> VolumeResourceRequirements:
    return VolumeResourceRequirements(requests={"storage": storage})


def _network_policy(
    settings: Settings, target: HomeserverTarget, metadata: ObjectMeta
) -> NetworkPolicy:
    """Every pod of the namespace (``podSelector: {}``), so anything not allowed here is
    denied: in, the platform release's proxy, worker and API pods (the API calls Synapse's
    admin API) on the client port, and the platform's namespace (and the monitoring one, if
    set) on the metrics port; out, DNS, the platform's API pods on the API port (the
    application service's transactions), the tenant's database, and — only for a tenant that
    federates or signs in through an OIDC provider — public addresses on HTTPS and the
    federation port."""
    metrics_port = settings.homeserver_metrics_port or METRICS_PORT
    egress = [
        NetworkPolicyEgressRule(
            to=[
                NetworkPolicyPeer(
                    namespaceSelector=LabelSelector(
                        matchLabels={"kubernetes.io/metadata.name": "kube-system"}
                    )
                )
            ],
            ports=[
                NetworkPolicyPort(protocol="UDP", port=53),
                NetworkPolicyPort(protocol="TCP", port=53),
            ],
        ),
        NetworkPolicyEgressRule(
            to=[_platform_pods(settings, ["api"])],
            ports=[NetworkPolicyPort(protocol="TCP", port=settings.api_port)],
        ),
    ]
    if settings.kubernetes_database_cidr is not None:
        egress.append(
            NetworkPolicyEgressRule(
                to=[
                    NetworkPolicyPeer(ipBlock=IPBlock(cidr=str(settings.kubernetes_database_cidr)))
                ],
                ports=[NetworkPolicyPort(protocol="TCP", port=5432)],
            )
        )
    if _reaches_out(target):
        egress.append(_public_egress(target))
    return NetworkPolicy(
        metadata=metadata,
        spec=NetworkPolicySpec(
            podSelector=LabelSelector(),
            policyTypes=["Ingress", "Egress"],
            ingress=[
                NetworkPolicyIngressRule(
                    from_=[_platform_pods(settings, ["api", "proxy", "worker"])],
                    ports=[NetworkPolicyPort(protocol="TCP", port=PORT)],
                ),
                NetworkPolicyIngressRule(
                    from_=[_namespace_peer(n) for n in _monitoring_namespaces(settings)],
                    ports=[NetworkPolicyPort(protocol="TCP", port=metrics_port)],
                ),
            ],
            egress=egress,
        ),
    )


def _namespace_peer(namespace: str) -> NetworkPolicyPeer:
    return NetworkPolicyPeer(
        namespaceSelector=LabelSelector(matchLabels={"kubernetes.io/metadata.name": namespace})
    )


def _platform_pods(settings: Settings, components: list[str]) -> NetworkPolicyPeer:
    """The platform release's pods of these components (the chart's component labels)."""
    return NetworkPolicyPeer(
        namespaceSelector=_namespace_peer(settings.kubernetes_platform_namespace).namespaceSelector,
        podSelector=LabelSelector(
            matchLabels={"app.kubernetes.io/instance": settings.kubernetes_release},
            matchExpressions=[
                LabelSelectorRequirement(
                    key="app.kubernetes.io/component", operator="In", values=components
                )
            ],
        ),
    )


def _monitoring_namespaces(settings: Settings) -> list[str]:
    """Who scrapes Synapse's metrics: any pod of the platform's namespace, and of
    C3_KUBERNETES_MONITORING_NAMESPACE (a Prometheus of its own) when set."""
    namespaces = [settings.kubernetes_platform_namespace]
    monitoring = settings.kubernetes_monitoring_namespace
    if monitoring and monitoring not in namespaces:
        namespaces.append(monitoring)
    return namespaces


def _reaches_out(target: HomeserverTarget) -> bool:
    return federation_mode(target.settings) is not FederationMode.OFF or bool(
        target.settings.get("oidc")
    )


def _public_egress(target: HomeserverTarget) -> NetworkPolicyEgressRule:
    """Public addresses (the networks Synapse's own ip_range_blacklist refuses are excepted,
    unless the operator allowed them) on 443 and 8448."""
    allowed = [ip_network(n, strict=False) for n in target.outbound_allowed_networks]
    peers = []
    for everything in (ip_network("0.0.0.0/0"), ip_network("::/0")):
        blocked = [
            str(net)
            for net in map(ip_network, OUTBOUND_BLOCKED_NETWORKS)
            if net.version == everything.version
            and net.prefixlen > 0
            and not any(a.version == net.version and net.subnet_of(a) for a in allowed)  # type: ignore[arg-type]
        ]
        peers.append(NetworkPolicyPeer(ipBlock=IPBlock(cidr=str(everything), except_=blocked)))
    peers += [NetworkPolicyPeer(ipBlock=IPBlock(cidr=str(a))) for a in allowed]
    return NetworkPolicyEgressRule(
        to=peers,
        ports=[
            NetworkPolicyPort(protocol="TCP", port=443),
            NetworkPolicyPort(protocol="TCP", port=8448),
        ],
    )


def _resource_quota(resources: Resources, metadata: ObjectMeta) -> ResourceQuota:
    """Room for the homeserver pod and one replacement during a rollout; nothing else."""
    return ResourceQuota(
        metadata=metadata,
        spec=ResourceQuotaSpec(
            hard={
                "pods": "2",
                "requests.cpu": f"{2 * resources.cpu_millicores}m",
                "limits.cpu": f"{2 * resources.cpu_millicores}m",
                "requests.memory": f"{2 * resources.memory_mib}Mi",
                "limits.memory": f"{2 * resources.memory_mib}Mi",
                "persistentvolumeclaims": "1",
                "requests.storage": f"{resources.storage_gib}Gi",
                "services": "1",
                "services.loadbalancers": "0",
                "services.nodeports": "0",
            }
        ),
    )


def _limit_range(resources: Resources, metadata: ObjectMeta) -> LimitRange:
    limits = {"cpu": f"{resources.cpu_millicores}m", "memory": f"{resources.memory_mib}Mi"}
    return LimitRange(
        metadata=metadata,
        spec=LimitRangeSpec(
            limits=[
                LimitRangeItem(
                    type="Container",
                    max=dict(limits),
                    default=dict(limits),
                    defaultRequest={"cpu": resources.cpu_request, "memory": limits["memory"]},
                ),
                LimitRangeItem(
                    type="PersistentVolumeClaim", max={"storage": f"{resources.storage_gib}Gi"}
                ),
            ]
        ),
    )
