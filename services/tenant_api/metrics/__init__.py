"""Platform metrics for Prometheus: reconcile counters and tenant/operation gauges."""
