"""What one webhook worker process sends: N events of one tenant fanned out to one endpoint
(a loopback receiver answering 204 at once) and delivered one by one, as the Celery tasks'
bodies do it (take the lease, sign, POST, record the attempt), on the test PostgreSQL; then
the retention sweep deleting them all once they are past C3_WEBHOOK_RETENTION_DAYS.

    PYTHONPATH=services:. C3_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python benchmarks/webhook_bench.py --events 500
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import time
import uuid
from datetime import timedelta
from pathlib import Path
from tempfile import mkdtemp

from platform_core.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500)
    args = parser.parse_args()
    from tests.helpers.environment import fresh_database

    with fresh_database(Path(mkdtemp())) as url:
        os.environ.update(
            {"C3_DATABASE_URL": url, "C3_SECRET_KEY": secrets.token_urlsafe(32), "C3_MODE": "local"}
        )
        get_settings.cache_clear()
        run(args.events)


def run(count: int) -> None:
    from platform_core import webhook_events
    from platform_core.crypto import SecretBox
    from platform_core.db import sync_engine, task_session
    from platform_core.migrate import upgrade
    from platform_core.models import WebhookEndpoint, utcnow
    from tenant_api.webhooks import dispatch, retention
    from tests.helpers.factories import make_tenant
    from tests.helpers.webhooks import Receiver

    upgrade(get_settings().effective_database_url)
    receiver = Receiver().start()
    tenant_id = make_tenant()
    with task_session() as session:
        session.add(
            WebhookEndpoint(
                tenant_id=tenant_id,
                url=receiver.url,
                event_types=["tenant.active"],
                secret_encrypted=SecretBox(get_settings().require_secret_key()).encrypt(
                    webhook_events.new_secret()
                ),
            )
        )
        for _ in range(count):
            webhook_events.record(session, "tenant.active", tenant_id, {"n": uuid.uuid4().hex})
    started = time.perf_counter()
    ids: list[uuid.UUID] = []
    while batch := dispatch.collect(utcnow()):  # 500 events per transaction
        ids += batch
    fanned = time.perf_counter() - started
    latencies = []
    started = time.perf_counter()
    for delivery_id in ids:
        one = time.perf_counter()
        assert dispatch.deliver(delivery_id, get_settings()) == "succeeded"
        latencies.append((time.perf_counter() - one) * 1000)
    sent = time.perf_counter() - started
    receiver.stop()
    assert len(receiver.received) == count
    # Everything settled long ago: the retention sweep deletes it all, batch by batch.
    later = utcnow() + timedelta(days=get_settings().webhook_retention_days + 1)
    started = time.perf_counter()
    pruned = retention.prune(later, get_settings())
    swept = time.perf_counter() - started
    assert pruned["deliveries"] >= count and pruned["events"] >= count, pruned
    sync_engine().dispose()
    print(f"fan-out: {count} events in {fanned:.2f} s ({count / fanned:.0f}/s)")
    print(
        f"delivery, one process: {count / sent:.0f}/s; per delivery p50 "
        f"{statistics.median(latencies):.1f} ms, p99 "
        f"{statistics.quantiles(latencies, n=100)[98]:.1f} ms"
    )
    rows = pruned["deliveries"] + pruned["attempts"] + pruned["events"]
    print(
        f"retention: {pruned['deliveries']} deliveries, {pruned['attempts']} attempts, "
        f"{pruned['events']} events deleted in {swept:.2f} s ({rows / swept:.0f} rows/s)"
    )


if __name__ == "__main__":
    main()
