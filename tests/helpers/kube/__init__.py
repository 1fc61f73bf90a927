"""A Kubernetes API server and kubelet stand-in for tests (see docs/testing.md): real HTTP on
loopback for lightkube, server-side apply with managed fields, and real Synapse "pods"."""

from tests.helpers.kube.server import (
    HOSTS_FILE_VARIABLE,
    RESOLVE_DIR,
    KubeApiServer,
    kube_api_server,
)

__all__ = ["HOSTS_FILE_VARIABLE", "RESOLVE_DIR", "KubeApiServer", "kube_api_server"]
