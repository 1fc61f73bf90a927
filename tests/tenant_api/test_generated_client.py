"""A client generated from the committed docs/openapi.json by a standard generator
(OpenAPI Generator's `python` generator, from PyPI's `openapi-generator-cli`, which runs on
Java) works against the real API server: it sends the bearer credential because the document
declares the scheme, creates a tenant (202 + its operation), follows the operation by its
readable operation id, and reads a refusal as the documented problem.

The client is generated into a temporary directory for each run; nothing of it is committed."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers.environment import OPERATOR_TOKEN
from tests.helpers.platform import running_api

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = Path(sys.executable).parent / "openapi-generator-cli"
PACKAGE = "c3_generated_client"

pytestmark = pytest.mark.skipif(
    shutil.which("java") is None, reason="OpenAPI Generator needs Java (a JRE 11+ on PATH)"
)


@pytest.fixture(scope="module")
def client_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    out = tmp_path_factory.mktemp("generated-client")
    generated = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--input-spec",
            str(ROOT / "docs" / "openapi.json"),
            "--generator-name",
            "python",
            "--output",
            str(out),
            "--package-name",
            PACKAGE,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generated.returncode == 0, generated.stdout[-3000:] + generated.stderr[-3000:]
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def api_url(
    platform_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("generated-client-api") / "api.log"
    with running_api({**os.environ, **platform_env}, log) as (port, _):
        yield f"http://127.0.0.1:{port}"


def test_a_generated_client_authenticates_and_creates_a_tenant(
    client_package: ModuleType, api_url: str
) -> None:
    c3 = client_package
    config = c3.Configuration(host=api_url, access_token=OPERATOR_TOKEN)
    with c3.ApiClient(config) as client:
        tenants = c3.TenantsApi(client)
        slug = f"gen{uuid.uuid4().hex[:8]}"
        created = tenants.tenants_create_with_http_info(
            c3.TenantCreate(slug=slug, display_name="Generated"),
            idempotency_key=f"create-{slug}",
        )
        assert created.status_code == 202
        tenant = created.data
        assert tenant.slug == slug and tenant.status.value == "provisioning"
        assert tenant.operation.url.endswith(f"/v1/operations/{tenant.operation.id}")

        operation = c3.OperationsApi(client).operations_get(tenant.operation.id)
        assert operation.kind.value == "provision" and operation.tenant_id == tenant.id
        assert tenants.tenants_get(tenant.id).slug == slug
        listed = tenants.tenants_list(limit=200)
        assert tenant.id in {t.id for t in listed.items} or listed.next_cursor


def test_a_generated_client_without_a_credential_reads_the_401_problem(
    client_package: ModuleType, api_url: str
) -> None:
    c3 = client_package
    with c3.ApiClient(c3.Configuration(host=api_url)) as client:
        with pytest.raises(c3.ApiException) as refused:
            c3.TenantsApi(client).tenants_list()
    assert refused.value.status == 401
    problem = c3.Problem.from_json(refused.value.body)
    assert problem.status == 401 and "Authorization" in problem.detail
