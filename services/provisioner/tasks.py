"""The provisioner's Celery tasks, registered under the names the API enqueues by
(``platform_core.celery.TaskNames``). Only registration lives here: ``provisioner.runner``
runs an operation, ``provisioner.operations`` holds each operation's body."""

from __future__ import annotations

from celery import Task
from celery.signals import worker_ready

from platform_core.celery import TaskNames, celery_app
from platform_core.settings import get_settings
from provisioner import exports, hibernation, questions, steps
from provisioner.operations.deprovision import deprovision
from provisioner.operations.export import export
from provisioner.operations.provision import provision
from provisioner.operations.reconfigure import reconfigure
from provisioner.operations.resume import resume
from provisioner.operations.suspend import suspend
from provisioner.reconciler import reconcile_all
from provisioner.runner import run_operation
from provisioner.usage_reconciliation import next_slice, reconcile_usage_all

app = celery_app()


@app.task(name=TaskNames.SUSPEND_TENANT, bind=True, acks_late=True)
def suspend_tenant(self: Task, operation_id: str) -> None:
    run_operation(self, operation_id, suspend)


@app.task(name=TaskNames.RESUME_TENANT, bind=True, acks_late=True)
def resume_tenant(self: Task, operation_id: str) -> None:
    run_operation(self, operation_id, resume)


@app.task(name=TaskNames.RECONFIGURE_TENANT, bind=True, acks_late=True)
def reconfigure_tenant(self: Task, operation_id: str) -> None:
    run_operation(self, operation_id, reconfigure)


@app.task(name=TaskNames.EXPORT_TENANT, bind=True, acks_late=True)
def export_tenant(self: Task, operation_id: str) -> None:
    run_operation(self, operation_id, export)


@app.task(name=TaskNames.EXPIRE_EXPORTS, acks_late=True)
def expire_exports() -> dict[str, int]:
    return exports.expire_exports(steps.context().settings)


@app.task(name=TaskNames.PROVISION_TENANT, bind=True, acks_late=True)
def provision_tenant(self: Task, operation_id: str) -> None:
    run_operation(self, operation_id, provision)


@app.task(name=TaskNames.DEPROVISION_TENANT, bind=True, acks_late=True)
def deprovision_tenant(self: Task, operation_id: str) -> None:
    run_operation(self, operation_id, deprovision)


@app.task(name=TaskNames.RECONCILE, acks_late=True)
def reconcile() -> dict[str, int]:
    return reconcile_all(steps.context())


@worker_ready.connect
def _reconcile_on_start(**_: object) -> None:
    """Reconcile as soon as a worker is up (beat's first run comes only an interval later): a
    platform restarted after an outage repairs at once what drifted meanwhile."""
    app.send_task(TaskNames.RECONCILE)
    # The local backend's zygote: the first wake finds Synapse imported. A backend of its own
    # (this is the pool's parent: no task state is made here).
    steps.make_backend(get_settings()).warm()


@app.task(name=TaskNames.RECONCILE_USAGE, acks_late=True)
def reconcile_usage() -> dict[str, int]:
    ctx = steps.context()
    return reconcile_usage_all(ctx, slice_no=next_slice(ctx))


# Questions the API waits for (platform_core.worker_requests): not acks_late — a question
# whose worker died is simply unanswered (the API's wait ends), never asked twice.
@app.task(name=TaskNames.HOMESERVER_LOGS, acks_late=False)
def homeserver_logs(reply_key: str, tenant_id: str, lines: int) -> None:
    questions.homeserver_logs(steps.context(), reply_key, tenant_id, lines)


@app.task(name=TaskNames.HOMESERVER_HEALTH, acks_late=False)
def homeserver_health(reply_key: str) -> None:
    questions.homeserver_health(steps.context(), reply_key)


@app.task(name=TaskNames.SLEEP_IDLE_HOMESERVERS, acks_late=True)
def sleep_idle_homeservers() -> dict[str, int]:
    return hibernation.sleep_idle(steps.context())


@app.task(name=TaskNames.WAKE_HOMESERVER, acks_late=True)
def wake_homeserver(tenant_id: str, stay_awake_s: float | None = None) -> str:
    return hibernation.wake(steps.context(), tenant_id, stay_awake_s=stay_awake_s)


@app.task(name=TaskNames.WAKE_FOR_MAINTENANCE, acks_late=True)
def wake_for_maintenance(window: str | None = None) -> int:
    return hibernation.wake_for_maintenance(steps.context(), window)
