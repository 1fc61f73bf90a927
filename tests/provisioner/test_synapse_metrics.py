"""Every tenant's Synapse serves its own metrics on a listener of its own, which only the
platform reaches: loopback next to the client port (local backend), or a fixed pod port
(C3_SYNAPSE_METRICS_PORT); the scrape targets the platform publishes follow the same rule."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
from synapse.config.homeserver import HomeServerConfig

from platform_core.errors import TemporaryError
from platform_core.metrics import homeserver_targets, synapse_metrics_address
from platform_core.routes import Route
from platform_core.settings import Settings
from provisioner.backends.local import LocalBackend, homeserver_ports
from provisioner.synapse_config import (
    HomeserverSecrets,
    HomeserverSpec,
    render_homeserver_config,
    write_homeserver_files,
)


def spec(tmp_path: Path) -> HomeserverSpec:
    return HomeserverSpec(
        server_name="acme.c3.test",
        public_baseurl="https://acme.c3.test/",
        port=41234,
        metrics_port=41235,
        bind_address="127.0.0.1",
        data_dir=tmp_path / "hs",
        limits={},
    )


def test_metrics_get_a_listener_of_their_own(tmp_path: Path) -> None:
    config = render_homeserver_config(spec(tmp_path), HomeserverSecrets.generate())
    client, metrics = config["listeners"]
    assert client["port"] == 41234 and "metrics" not in str(client["resources"])
    assert metrics == {
        "port": 41235,
        "bind_addresses": ["127.0.0.1"],
        "type": "metrics",
        "tls": False,
    }
    assert config["enable_metrics"] is True
    off = render_homeserver_config(
        dataclasses.replace(spec(tmp_path), metrics_port=None), HomeserverSecrets.generate()
    )
    assert off["enable_metrics"] is False and len(off["listeners"]) == 1


def test_synapse_itself_accepts_the_metrics_listener(tmp_path: Path) -> None:
    write_homeserver_files(spec(tmp_path), HomeserverSecrets.generate())
    loaded = HomeServerConfig.load_config("c3", ["-c", str(tmp_path / "hs" / "homeserver.yaml")])
    assert loaded.metrics.enable_metrics is True
    assert [(lc.type, lc.port) for lc in loaded.server.listeners] == [
        ("http", 41234),
        ("metrics", 41235),
    ]


def test_the_local_backend_allocates_free_port_pairs_outside_the_ephemeral_range(
    tmp_path: Path,
) -> None:
    backend = LocalBackend(tmp_path)
    low, _ = (int(p) for p in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    port = backend.allocate_port(set())
    # A passing outgoing connection never takes a homeserver's port: none is in the kernel's
    # ephemeral range (Linux's default starts at 32768).
    assert port % 2 == 0 and 10000 <= port and port + 1 < low
    assert backend.port_is_free(port)
    with socket.socket() as sock:  # someone takes the metrics port: the pair is not free
        sock.bind(("127.0.0.1", port + 1))
        sock.listen()
        assert not backend.port_is_free(port)
    # Never next to another homeserver's pair.
    for _ in range(20):
        other = backend.allocate_port({port})
        assert other not in (port - 1, port, port + 1)


@pytest.mark.parametrize(
    ("configured", "ephemeral", "first", "last"),
    [
        ("", (32768, 60999), 10000, 32766),  # Linux's default: 11,384 pairs below it
        ("", (10500, 60999), 61000, 65534),  # too few below: above it
        ("", (20001, 60999), 10000, 19998),  # the metrics port stays below the range
        ("20001-20010", (32768, 60999), 20002, 20008),  # as set, even client ports
    ],
)
def test_homeserver_ports_keep_out_of_the_ephemeral_range_unless_set(
    configured: str, ephemeral: tuple[int, int], first: int, last: int
) -> None:
    ports = homeserver_ports(configured, ephemeral)
    assert (ports[0], ports[-1]) == (first, last)
    assert all(p % 2 == 0 for p in (ports[0], ports[-1]))


def test_a_full_port_range_says_which_setting_to_widen(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path, ports="20000-20003")
    assert backend.allocate_port(set()) in (20000, 20002)
    with pytest.raises(TemporaryError, match=r"20000-20003.*C3_HOMESERVER_PORTS"):
        backend.allocate_port({20000, 20002})
    # A port from before the range (a homeserver made earlier) is not kept: it moves.
    assert not backend.port_is_free(40000)
    # A range too narrow for one pair is refused the same way, not with a crash.
    with pytest.raises(TemporaryError, match="an empty range"):
        LocalBackend(tmp_path, ports="20001-20002").allocate_port(set())


def route(slug: str, upstream: str, status: str = "active") -> Route:
    return Route(
        tenant_id=f"id-{slug}",
        slug=slug,
        server_name=f"{slug}.c3.test",
        upstream=upstream,
        status=status,
        max_upload_bytes=1,
    )


def test_scrape_targets_follow_the_same_rule() -> None:
    assert synapse_metrics_address("http://127.0.0.1:41234", None) == "127.0.0.1:41235"
    assert (
        synapse_metrics_address("http://synapse.c3-t-1.svc.cluster.local:8008", 9000)
        == "synapse.c3-t-1.svc.cluster.local:9000"
    )
    acme = route("acme", "http://127.0.0.1:41234")
    # Each route is published under its host and its slug: one target per tenant; a
    # suspended tenant's stopped homeserver is no target (it is not down).
    groups = homeserver_targets(
        [acme, acme, route("sleepy", "http://127.0.0.1:5000", "suspended")], None
    )
    assert groups == [
        {
            "targets": ["127.0.0.1:41235"],
            "labels": {"tenant": "acme", "tenant_id": "id-acme", "server_name": "acme.c3.test"},
        }
    ]


def test_discovery_port_is_the_kubernetes_pods_metrics_port() -> None:
    """GET /metrics/homeservers targets <Service>:9000 on the kubernetes backend (the pod's
    and the Service's ``metrics`` port), C3_SYNAPSE_METRICS_PORT when set, else client + 1."""
    kube = Settings(backend="kubernetes")
    assert kube.homeserver_metrics_port == 9000
    assert Settings(backend="kubernetes", synapse_metrics_port=9100).homeserver_metrics_port == 9100
    assert Settings(backend="local").homeserver_metrics_port is None
    [group] = homeserver_targets(
        [route("acme", "http://synapse.c3-t-1.svc.cluster.local:8008")],
        kube.homeserver_metrics_port,
    )
    assert group["targets"] == ["synapse.c3-t-1.svc.cluster.local:9000"]
