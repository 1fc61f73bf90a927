import time
from tenant_api.rate_limit import RateLimitMiddleware
from tests.helpers.api import bearer, new_tenant, tenant_admin_headers
from tests.helpers.environment import auth

async def test_bench(api):
    tenant = await new_tenant(api)
    key = (await api.post("/v1/api-keys", json={"name": "b", "scopes": ["tenants:read"], "tenant_id": tenant["id"]})).json()["key"]
    admin = await tenant_admin_headers(api, tenant["id"])
    mw = RateLimitMiddleware(None)
    for who, h in (("tenant key", bearer(key)), ("tenant admin token", admin), ("operator token", auth()), ("no credential", {})):
        scope = {"type": "http", "path": "/v1/tenants", "headers": [(k.lower().encode(), v.encode()) for k, v in h.items()], "client": ("198.18.0.1", 1)}
        for _ in range(20):
            await mw._decide(scope)
        n = 300; t = time.perf_counter()
        for _ in range(n):
            d = await mw._decide(scope)
            assert d is not None
        print(f"\n{who}: {(time.perf_counter()-t)/n*1000:.2f} ms per decision")
