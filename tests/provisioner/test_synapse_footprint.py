"""Synapse's footprint (issue 16): the plan's cache limits reach the homeserver's config, and a
real homeserver started by the local backend runs with jemalloc and with those caches."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from synapse.config.homeserver import HomeServerConfig

from provisioner.backends.base import HomeserverTarget
from provisioner.backends.local import LocalBackend
from provisioner.malloc import JEMALLOC_CONF, jemalloc_path, synapse_environment
from provisioner.synapse_config import (
    FOOTPRINT_DEFAULTS,
    HomeserverSecrets,
    HomeserverSpec,
    render_homeserver_config,
    write_homeserver_files,
)
from tenant_api.plans.schemas import LimitsIn
from tests.helpers.matrix import synapse_processes
from tests.helpers.platform import poll

SECRETS = HomeserverSecrets.generate()


def spec(tmp_path: Path, **limits: object) -> HomeserverSpec:
    return HomeserverSpec(
        server_name="acme.c3.test",
        public_baseurl="https://acme.c3.test/",
        port=41234,
        bind_address="127.0.0.1",
        data_dir=tmp_path / "hs",
        limits=dict(limits),
    )


def loaded(tmp_path: Path, **limits: object) -> HomeServerConfig:
    write_homeserver_files(spec(tmp_path, **limits), SECRETS)
    return HomeServerConfig.load_config("c3", ["-c", str(tmp_path / "hs" / "homeserver.yaml")])


def test_every_homeserver_gets_the_measured_cache_defaults(tmp_path: Path) -> None:
    config = render_homeserver_config(spec(tmp_path), SECRETS)
    assert config["caches"]["global_factor"] == FOOTPRINT_DEFAULTS["synapse_cache_factor"]
    assert config["event_cache_size"] == FOOTPRINT_DEFAULTS["synapse_event_cache_size"]
    synapse = loaded(tmp_path)
    assert synapse.caches.global_factor == FOOTPRINT_DEFAULTS["synapse_cache_factor"]
    assert synapse.caches.event_cache_size == FOOTPRINT_DEFAULTS["synapse_event_cache_size"]


def test_a_plan_sets_its_own_caches_and_synapse_reads_them(tmp_path: Path) -> None:
    synapse = loaded(
        tmp_path,
        synapse_cache_factor=1.5,
        synapse_event_cache_size=2000,
        synapse_cache_max_memory_mib=256,
    )
    assert synapse.caches.global_factor == 1.5
    assert synapse.caches.event_cache_size == 2000
    assert synapse.caches.cache_autotuning == {
        "max_cache_memory_usage": 256 * 1024 * 1024,
        "target_cache_memory_usage": 192 * 1024 * 1024,
        "min_cache_ttl": 5 * 60 * 1000,
    }
    # 0: no autotuning at all (Synapse needs all three of its options or none).
    assert (
        "cache_autotuning"
        not in render_homeserver_config(spec(tmp_path, synapse_cache_max_memory_mib=0), SECRETS)[
            "caches"
        ]
    )


def test_operators_set_the_cache_limits_on_a_plan_within_bounds() -> None:
    limits = LimitsIn(
        synapse_cache_factor=0.25, synapse_event_cache_size=2000, synapse_cache_max_memory_mib=0
    )
    assert limits.model_dump(exclude_none=True) == {
        "synapse_cache_factor": 0.25,
        "synapse_event_cache_size": 2000,
        "synapse_cache_max_memory_mib": 0,
    }
    for bad in ({"synapse_cache_factor": 0}, {"synapse_event_cache_size": 10}):
        with pytest.raises(ValidationError):
            LimitsIn(**bad)


def test_jemalloc_is_preloaded_only_when_wanted_and_installed() -> None:
    base = {"PATH": "/usr/bin", "LD_PRELOAD": "/opt/other.so"}
    assert synapse_environment(base, use_jemalloc=False) == base
    found = jemalloc_path()
    with_jemalloc = synapse_environment(base, use_jemalloc=True)
    if found is None:
        assert with_jemalloc == base
    else:  # first, and whatever the operator preloads stays
        assert with_jemalloc["LD_PRELOAD"] == f"{found} /opt/other.so"
        assert with_jemalloc["MALLOC_CONF"] == JEMALLOC_CONF
        own = synapse_environment({**base, "MALLOC_CONF": "narenas:2"}, use_jemalloc=True)
        assert own["MALLOC_CONF"] == "narenas:2"  # the operator's own options win


def cache_max_sizes(metrics_url: str) -> dict[str, float]:
    """Synapse's own ``synapse_util_caches_cache_max_size`` gauge, by cache name."""
    text = httpx.get(metrics_url, timeout=5).text
    sizes = {}
    for match in re.finditer(
        r'^synapse_util_caches_cache_max_size\{(?:[^}]*,)?name="([^"]+)"[^}]*\} (\S+)$', text, re.M
    ):
        sizes[match[1]] = float(match[2])
    return sizes


def test_a_real_homeserver_runs_with_jemalloc_and_the_plan_caches(tmp_path: Path) -> None:
    if jemalloc_path() is None:
        pytest.skip("libjemalloc2 is not installed (scripts/system_deps installs it as root)")
    backend = LocalBackend(tmp_path, jemalloc=True)  # C3_SYNAPSE_JEMALLOC=true
    target = HomeserverTarget(
        tenant_id="footprint",
        server_name="acme.c3.test",
        public_baseurl="http://acme.c3.test/",
        port=backend.allocate_port(set()),
        limits={"synapse_cache_factor": 0.25, "synapse_event_cache_size": 1234},
        secrets=SECRETS,
    )
    backend.render(target)
    backend.start(target)
    try:
        url = backend.upstream_url(target)

        def healthy() -> bool:
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        poll(healthy, timeout=90, what="the homeserver to answer /health")
        [process] = synapse_processes(backend.tenant_dir("footprint") / "homeserver.yaml")
        assert "libjemalloc" in Path(f"/proc/{process.pid}/maps").read_text()
        assert process.environ().get("MALLOC_CONF") == JEMALLOC_CONF

        assert target.port is not None
        metrics_url = f"http://127.0.0.1:{target.port + 1}/_synapse/metrics"
        sizes = poll(lambda: cache_max_sizes(metrics_url) or None, timeout=30, what="cache metrics")
        # Every cache, the event cache included, is its base size times the plan's factor
        # (Synapse's own default factor is 0.5: these would be twice as large).
        assert sizes["*getEvent*"] == int(1234 * 0.25)
        assert sizes["_event_auth_cache"] == 500_000 * 0.25
    finally:
        backend.stop_all()  # and the zygote it was forked from
