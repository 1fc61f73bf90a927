"""Usage-check benchmark: the CPU one tenant costs the worker in the usage check
(``provisioner.usage_reconciliation.reconcile_tenant_usage``: read the homeserver's own
records, compare them with the ledger, store the drift) and in the sleep pass's due-work read
(``Backend.due_work``), on a platform's data directory that real homeservers wrote.

The data directory is one a density run kept (``density_bench.py --keep-data`` prints it): its
SQLite platform database, each tenant's rendered ``homeserver.yaml`` and Synapse database. The
check writes its usual rows into that platform database (a kept run's, nothing else's); Redis
is only named (``C3_REDIS_URL``, default the local one), not used by these reads.

Per ``--tenants`` tenants (the first active ones), ``--rounds`` times, it prints the CPU
milliseconds per tenant (``time.process_time``) of the whole check and of the due-work read,
and the median. Run it with ``PYTHONPATH`` pointing at another export of ``services``
(``git archive <commit> services``) to time older code on the same data.

Usage (from the repository root)::

    PYTHONPATH=services:. .venv/bin/python benchmarks/usage_check_bench.py \\
        --data-dir /tmp/c3-density-sleep-XXXX --tenants 200
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="a kept density run's")
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not (args.data_dir / "platform.db").is_file():
        parser.error(f"{args.data_dir} has no platform.db: pass a density run's kept data")
    os.environ["C3_DATA_DIR"] = str(args.data_dir.resolve())
    os.environ.setdefault("C3_REDIS_URL", "redis://127.0.0.1:6379/0")

    from platform_core.db import task_session
    from platform_core.models import TenantStatus
    from provisioner import repository, steps
    from provisioner.usage_reconciliation import reconcile_tenant_usage

    ctx = steps.context()
    with task_session() as session:
        active = repository.tenants_with_status(session, [TenantStatus.ACTIVE])
        tenants = [t.id for t in active][: args.tenants]
    if not tenants:
        parser.error("no active tenants in that platform database")
    check, due = [], []
    for n in range(args.rounds):
        began = time.process_time()
        for tenant_id in tenants:
            reconcile_tenant_usage(ctx, tenant_id)
        check.append((time.process_time() - began) / len(tenants) * 1000)
        began = time.process_time()
        for tenant_id in tenants:
            ctx.backend.due_work(str(tenant_id))
        due.append((time.process_time() - began) / len(tenants) * 1000)
        print(
            f"round {n + 1}: usage check {check[-1]:.2f} ms, due work {due[-1]:.2f} ms "
            f"of CPU per tenant ({len(tenants)} tenants)",
            flush=True,
        )
    print(
        f"median: usage check {statistics.median(check):.2f} ms, due work "
        f"{statistics.median(due):.2f} ms of CPU per tenant ({sys.argv[0]}, "
        f"services from {Path(steps.__file__).resolve().parent.parent})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
