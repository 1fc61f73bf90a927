"""A homeserver looks the system's trusted CAs up one at a time instead of parsing the whole
bundle for every TLS context it makes (local.ca_directory_environment): a certificate a public
CA issued is still trusted, one no CA vouches for still is not, and an operator's own CA
settings win."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.backends.local import (
    SYSTEM_CA_BUNDLE,
    SYSTEM_CA_DIRECTORY,
    ca_directory_environment,
)

VERIFY = """
import sys
from OpenSSL import SSL, crypto
context = SSL.Context(SSL.TLS_CLIENT_METHOD)
context.set_default_verify_paths()  # what Twisted's platformTrust() does for Synapse
certificate = crypto.load_certificate(crypto.FILETYPE_PEM, sys.stdin.read().encode())
try:
    crypto.X509StoreContext(context.get_cert_store(), certificate).verify_certificate()
    print("trusted")
except crypto.X509StoreContextError as exc:
    print("refused:", exc)
"""


def verdict(environment: dict[str, str], pem: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", VERIFY],
        input=pem,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


pytestmark = pytest.mark.skipif(
    not (SYSTEM_CA_DIRECTORY / SYSTEM_CA_BUNDLE).exists()
    or not any(SYSTEM_CA_DIRECTORY.glob("*.0")),
    reason="no Debian CA store here",
)


def test_homeservers_trust_the_systems_cas_looked_up_one_at_a_time(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin:/bin"}
    environment = ca_directory_environment(base)
    assert environment["SSL_CERT_DIR"] == str(SYSTEM_CA_DIRECTORY)
    assert not Path(environment["SSL_CERT_FILE"]).exists()  # the bundle is not parsed
    # The bundle named explicitly (as this machine kind's environment does) is the same CAs.
    named = {**base, "SSL_CERT_FILE": str(SYSTEM_CA_DIRECTORY / SYSTEM_CA_BUNDLE)}
    assert ca_directory_environment(named) == environment

    public_ca = next(SYSTEM_CA_DIRECTORY.glob("*.0")).read_text()
    assert verdict(environment, public_ca) == "trusted"
    # The lookup is what trusts it: pointed at an empty directory, nothing is trusted.
    assert verdict({**environment, "SSL_CERT_DIR": str(tmp_path)}, public_ca).startswith("refused")


def test_an_operators_own_ca_settings_are_left_alone(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin:/bin"}
    for own in (
        {**base, "SSL_CERT_FILE": "/etc/our-company/ca.pem"},
        {**base, "SSL_CERT_DIR": "/etc/our-company/certs"},
    ):
        assert ca_directory_environment(own) == own
    assert ca_directory_environment(base, directory=tmp_path) == base  # no such store
