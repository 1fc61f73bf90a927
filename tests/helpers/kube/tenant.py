"""A minimal tenant as the contract lays it out (Namespace, Secret, ConfigMap, StatefulSet,
Service), rendered with the provisioner's own Synapse config code, for tests and benchmarks of
the fake API server itself (the kubernetes backend builds the real ones)."""

from __future__ import annotations

from pathlib import Path

import yaml
from lightkube.core.resource import Resource
from lightkube.models.apps_v1 import StatefulSetSpec
from lightkube.models.core_v1 import (
    ConfigMapVolumeSource,
    Container,
    ContainerPort,
    HTTPGetAction,
    PersistentVolumeClaim,
    PersistentVolumeClaimSpec,
    PodSpec,
    PodTemplateSpec,
    Probe,
    SecretVolumeSource,
    ServicePort,
    ServiceSpec,
    Volume,
    VolumeMount,
    VolumeResourceRequirements,
)
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import ConfigMap, Namespace, Secret, Service

from provisioner.synapse_config import (
    HomeserverSecrets,
    HomeserverSpec,
    render_homeserver_config,
    render_log_config,
)

POD_LABELS = {"app.kubernetes.io/name": "synapse"}


def homeserver_files(server_name: str) -> tuple[dict[str, str], dict[str, str]]:
    """(ConfigMap data, Secret data) of a SQLite Synapse laid out under /config, /secrets, /data."""
    hs_secrets = HomeserverSecrets.generate()
    spec = HomeserverSpec(
        server_name=server_name,
        public_baseurl=f"https://{server_name}/",
        port=8008,
        bind_address="0.0.0.0",
        data_dir=Path("/data"),
        limits={},
    )
    config = render_homeserver_config(spec, hs_secrets)
    config["log_config"] = "/config/log.yaml"
    config["signing_key_path"] = "/secrets/signing.key"
    return (
        {
            "homeserver.yaml": yaml.safe_dump(config, sort_keys=True),
            "log.yaml": yaml.safe_dump(render_log_config(Path("/data")), sort_keys=True),
        },
        {"signing.key": hs_secrets.signing_key + "\n"},
    )


def tenant_objects(
    namespace: str, *, homeserver_yaml: str | None = None, replicas: int = 1
) -> list[Resource]:
    """The objects of one tenant; ``homeserver_yaml`` replaces the rendered config (e.g. a
    broken one, for a crash loop)."""
    config, secret = homeserver_files(f"{namespace}.example.test")
    if homeserver_yaml is not None:
        config["homeserver.yaml"] = homeserver_yaml
    labels = {"app.kubernetes.io/managed-by": "c3"}
    meta = ObjectMeta(namespace=namespace, labels=labels)
    probe = Probe(httpGet=HTTPGetAction(path="/health", port=8008), periodSeconds=5)
    container = Container(
        name="synapse",
        image="ghcr.io/element-hq/synapse:v1.163.2",
        args=["run", "--config-path", "/config/homeserver.yaml"],
        ports=[ContainerPort(containerPort=8008, name="client")],
        readinessProbe=probe,
        volumeMounts=[
            VolumeMount(name="config", mountPath="/config", readOnly=True),
            VolumeMount(name="secrets", mountPath="/secrets", readOnly=True),
            VolumeMount(name="data", mountPath="/data"),
        ],
    )
    return [
        Namespace(metadata=ObjectMeta(name=namespace, labels=labels)),
        Secret(metadata=_named(meta, "synapse-secrets"), stringData=secret),
        ConfigMap(metadata=_named(meta, "synapse-config"), data=config),
        StatefulSet(
            metadata=_named(meta, "synapse"),
            spec=StatefulSetSpec(
                replicas=replicas,
                serviceName="synapse",
                selector=LabelSelector(matchLabels=POD_LABELS),
                template=PodTemplateSpec(
                    metadata=ObjectMeta(labels={**POD_LABELS, **labels}),
                    spec=PodSpec(
                        containers=[container],
                        volumes=[
                            Volume(
                                name="config",
                                configMap=ConfigMapVolumeSource(name="synapse-config"),
                            ),
                            Volume(
                                name="secrets",
                                secret=SecretVolumeSource(secretName="synapse-secrets"),
                            ),
                        ],
                    ),
                ),
                volumeClaimTemplates=[_claim()],
            ),
        ),
        Service(
            metadata=_named(meta, "synapse"),
            spec=ServiceSpec(
                selector=POD_LABELS, ports=[ServicePort(name="client", port=8008, targetPort=8008)]
            ),
        ),
    ]


def _named(meta: ObjectMeta, name: str) -> ObjectMeta:
    return ObjectMeta(name=name, namespace=meta.namespace, labels=dict(meta.labels or {}))


def _claim() -> PersistentVolumeClaim:
    return PersistentVolumeClaim(
        metadata=ObjectMeta(name="data"),
        spec=PersistentVolumeClaimSpec(
            accessModes=["ReadWriteOnce"],
            resources=VolumeResourceRequirements(requests={"storage": "1Gi"}),
        ),
    )
