"""Markers of the deployment checks."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cluster: installs the chart on a real Kubernetes cluster (KUBECONFIG); skipped without one",
    )
