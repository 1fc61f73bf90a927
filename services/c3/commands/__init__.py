"""The `c3` commands for daily work (tenants, operations, keys, status, logs, version): an
integrator's client on the SDK (``c3.sdk``), talking to the API over HTTP, never to the
database."""
