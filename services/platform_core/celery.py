"""The Celery app and every task name: services enqueue work by name, never by import."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery, Task
from celery.schedules import crontab
from celery.signals import before_task_publish, task_postrun, task_prerun

from platform_core.logging import request_id_var, tenant_id_var
from platform_core.settings import get_settings

# The usage check's periodic pass runs about every 30 s (or every C3_USAGE_RECONCILE_INTERVAL_S,
# if shorter), each pass on the next slice of the tenants (by id;
# provisioner.usage_reconciliation): every tenant is still checked once per interval, and the
# work comes in small steps, not one burst that takes the CPU from homeservers waking meanwhile.
USAGE_CHECK_PASS_S = 30.0


def usage_check_slices(interval_s: float) -> int:
    """How many passes, each on a slice of the tenants, make one usage-check interval."""
    return max(1, round(interval_s / USAGE_CHECK_PASS_S))


class TaskNames:
    PROVISION_TENANT = "c3.provisioner.provision_tenant"
    DEPROVISION_TENANT = "c3.provisioner.deprovision_tenant"
    SUSPEND_TENANT = "c3.provisioner.suspend_tenant"
    RESUME_TENANT = "c3.provisioner.resume_tenant"
    RECONFIGURE_TENANT = "c3.provisioner.reconfigure_tenant"
    EXPORT_TENANT = "c3.provisioner.export_tenant"
    EXPIRE_EXPORTS = "c3.provisioner.expire_exports"
    RECONCILE = "c3.provisioner.reconcile"
    RECONCILE_USAGE = "c3.provisioner.reconcile_usage"
    APPLY_USAGE_BATCHES = "c3.usage.apply_usage_batches"
    FINALIZE_INVOICES = "c3.invoices.finalize_invoices"
    EXPIRE_CONTEXT_PARTICIPANTS = "c3.contexts.expire_participants"
    # Questions the API asks a worker and waits for (platform_core.worker_requests).
    HOMESERVER_LOGS = "c3.provisioner.homeserver_logs"
    HOMESERVER_HEALTH = "c3.provisioner.homeserver_health"
    # Webhooks (tenant_api.webhooks.tasks).
    DISPATCH_WEBHOOKS = "c3.webhooks.dispatch"
    DELIVER_WEBHOOK = "c3.webhooks.deliver"
    CHECK_USAGE_THRESHOLDS = "c3.webhooks.check_usage_thresholds"
    PRUNE_WEBHOOKS = "c3.webhooks.prune"
    # Sleeping homeservers (provisioner.hibernation): the proxy sends WAKE_HOMESERVER.
    SLEEP_IDLE_HOMESERVERS = "c3.provisioner.sleep_idle_homeservers"
    WAKE_HOMESERVER = "c3.provisioner.wake_homeserver"
    WAKE_FOR_MAINTENANCE = "c3.provisioner.wake_for_maintenance"


# The wake lane (docs/hibernation.md, "The wake lane"): a wake is a client's request held in a
# proxy, and most of it is waiting for a homeserver to start. Its tasks have a queue of their
# own, served by `c3 worker --lane wake` (threads; `c3 worker` leaves it alone unless
# C3_WAKE_LANE=false), so sleep passes, reconciles, usage batches and provisioning, which share
# the worker's few processes, never keep a held request waiting (measured: at 50 wakes in 15 s,
# waiting for a free process was p95 1.96 s of a 3.5 s wake).
WAKE_LANE_TASKS = (TaskNames.WAKE_HOMESERVER,)


def queue_names(namespace: str) -> tuple[str, str]:
    """The default queue and the wake lane's, for a Redis namespace (C3_REDIS_NAMESPACE)."""
    return f"{namespace}.default", f"{namespace}.wake"


# The task that carries out each kind of operation (keyed by OperationKind value).
TASK_FOR_OPERATION_KIND = {
    "provision": TaskNames.PROVISION_TENANT,
    "deprovision": TaskNames.DEPROVISION_TENANT,
    "suspend": TaskNames.SUSPEND_TENANT,
    "resume": TaskNames.RESUME_TENANT,
    "reconfigure": TaskNames.RECONFIGURE_TENANT,
    "export": TaskNames.EXPORT_TENANT,
}


def _config() -> dict[str, object]:
    """Celery configuration from C3 settings, read only when Celery first needs it (so task
    modules import without a configured broker, e.g. in tests and tools)."""
    settings = get_settings()
    default_queue, wake_queue = queue_names(settings.redis_namespace)
    return {
        "broker_url": settings.require_redis_url(),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": default_queue,
        "task_routes": {name: {"queue": wake_queue} for name in WAKE_LANE_TASKS},
        "broker_transport_options": {
            # Longer than any task's hard time limit, so a running task is never redelivered.
            "visibility_timeout": 3600,
            "global_keyprefix": f"{settings.redis_namespace}:celery:",
        },
        "broker_connection_retry_on_startup": True,
        "task_time_limit": 900,
        "task_soft_time_limit": 840,
        "task_ignore_result": True,
        "timezone": "UTC",
        "enable_utc": True,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "apply-usage-batches": _every(
                TaskNames.APPLY_USAGE_BATCHES,
                settings.usage_flush_interval_s,
                expires=max(2.0, settings.usage_flush_interval_s * 2),
            ),
            "reconcile": _every(TaskNames.RECONCILE, settings.reconcile_interval_s),
            # Expired export archives are deleted (their links already answer 410).
            "expire-exports": _every(TaskNames.EXPIRE_EXPORTS, settings.reconcile_interval_s),
            "reconcile-usage": _every(
                TaskNames.RECONCILE_USAGE,
                settings.usage_reconcile_interval_s
                / usage_check_slices(settings.usage_reconcile_interval_s),
            ),
            # External context participants whose credential expired lose their account.
            "expire-context-participants": _every(
                TaskNames.EXPIRE_CONTEXT_PARTICIPANTS, settings.contexts_expiry_interval_s
            ),
            # Webhooks: new events fanned out, due deliveries (retries, and those whose worker
            # died mid-send) enqueued again.
            "dispatch-webhooks": _every(
                TaskNames.DISPATCH_WEBHOOKS,
                settings.webhook_dispatch_interval_s,
                expires=max(2.0, settings.webhook_dispatch_interval_s * 2),
            ),
            "check-usage-thresholds": _every(
                TaskNames.CHECK_USAGE_THRESHOLDS, settings.webhook_usage_check_interval_s
            ),
            # Settled webhook deliveries, events and context outbox rows past their retention.
            "prune-webhooks": _every(
                TaskNames.PRUNE_WEBHOOKS, settings.webhook_retention_interval_s
            ),
            # Idle homeservers with nothing due are put to sleep (plans with idle_after_seconds).
            "sleep-idle-homeservers": _every(
                TaskNames.SLEEP_IDLE_HOMESERVERS, settings.sleep_check_interval_s
            ),
            # The maintenance window: opens daily at C3_SLEEP_MAINTENANCE_HOUR_UTC, then wakes
            # sleepers in bounded waves (C3_SLEEP_MAINTENANCE_CONCURRENCY), a few each pass.
            "wake-for-maintenance": _every(
                TaskNames.WAKE_FOR_MAINTENANCE, settings.sleep_check_interval_s
            ),
            "finalize-invoices": _every(
                TaskNames.FINALIZE_INVOICES, settings.invoice_finalize_interval_s
            ),
        },
    }


def _every(task: str, schedule: float | crontab, *, expires: float | None = None) -> dict[str, Any]:
    """A beat entry running ``task`` on ``schedule`` (seconds or a crontab). A run not picked up
    by ``expires`` seconds (default: the interval) is dropped: the next one does its work."""
    return {
        "task": task,
        "schedule": schedule,
        "options": {"expires": schedule if expires is None else expires},
    }


# Message headers that carry the enqueuing request's ids to the task (platform_core.logging).
REQUEST_ID_HEADER = "c3_request_id"
TENANT_ID_HEADER = "c3_tenant_id"


def _stamp_request_ids(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """before_task_publish: the task carries the id of the request (or task) enqueuing it."""
    if headers is None:
        return
    request_id, tenant_id = request_id_var.get(), tenant_id_var.get()
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    if tenant_id:
        headers[TENANT_ID_HEADER] = tenant_id


def _restore_request_ids(task: Task | None = None, **_: Any) -> None:
    """task_prerun: the task's log lines carry the ids its message came with (or none)."""
    request = getattr(task, "request", None)
    request_id_var.set(getattr(request, REQUEST_ID_HEADER, None))
    tenant_id_var.set(getattr(request, TENANT_ID_HEADER, None))


def _forget_request_ids(**_: Any) -> None:
    """task_postrun: the next task in this worker process starts without them."""
    request_id_var.set(None)
    tenant_id_var.set(None)


@lru_cache(maxsize=1)
def celery_app() -> Celery:
    # Which modules define tasks is wiring, not a shared contract: `c3 worker` names them.
    app = Celery("c3")
    app.add_defaults(_config)
    before_task_publish.connect(_stamp_request_ids, weak=False)
    task_prerun.connect(_restore_request_ids, weak=False)
    task_postrun.connect(_forget_request_ids, weak=False)
    return app


def send_task(name: str, *args: object) -> None:
    celery_app().send_task(name, args=list(args))
