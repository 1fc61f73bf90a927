"""Client readiness check of a tenant's homeserver (GET /v1/tenants/{id}/readiness)."""
