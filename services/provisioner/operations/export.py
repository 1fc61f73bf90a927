"""Export: make one tenant's export archive (``provisioner.exports`` builds it), then mark
the export ready for download."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from platform_core import object_store
from platform_core.db import task_session
from platform_core.errors import PermanentError, Superseded
from platform_core.models import ExportState, Homeserver, Tenant, TenantExport, TenantStatus, utcnow
from platform_core.private_files import private_temp_dir
from platform_core.synapse_admin import PLATFORM_ADMIN_LOCALPART
from provisioner import exports, repository, steps
from provisioner.lease import Lease
from provisioner.operations.common import load

log = logging.getLogger(__name__)

_RENEW_EVERY_S = 20.0


def export(ctx: steps.Context, op_id: uuid.UUID, lease: Lease) -> None:
    """Make the export's archive unless the object store holds it, then mark the export
    ready. A redelivered task finds the finished archive (an object appears only once its
    upload completed) and makes no second one. A backend whose files the worker cannot read
    (kubernetes) first copies what it can into a private scratch directory."""
    with private_temp_dir(exports.work_dir(ctx.settings), prefix="export-files-") as scratch:
        with task_session() as session:
            row = _export_of(session, op_id)
            if row.state is ExportState.READY:
                return
            if row.state is ExportState.EXPIRED:
                raise PermanentError("this export expired already")
            row.state = ExportState.PENDING  # a failed export that an operator retried
            loaded = load(session, op_id)
            tenant = loaded.tenant
            if tenant.status not in (TenantStatus.ACTIVE, TenantStatus.SUSPENDED):
                raise Superseded(f"a {tenant.status.value} tenant cannot be exported")
            source = _source(ctx, tenant, loaded.homeserver_or_none, row.id, scratch / "homeserver")
        key = object_store.export_key(source.export_id)
        if ctx.store.exists(key):  # a redelivered task whose upload finished
            size, digest = exports.stored_digest(ctx.store, key)
        else:
            size, digest = exports.publish_archive(
                ctx.store,
                ctx.settings,
                lambda dest: exports.build_archive(
                    source,
                    dest,
                    admin_url=ctx.settings.tenant_database_url,
                    synapse_version=exports.synapse_version(ctx.settings.synapse_python),
                    keep_alive=_renewer(lease),
                ),
                key,
            )
    with task_session() as session:
        row = _export_of(session, op_id)
        row.state = ExportState.READY
        row.path = key  # the object store key
        row.size_bytes = size
        row.sha256 = digest
        row.expires_at = utcnow() + timedelta(seconds=ctx.settings.export_link_ttl_s)
    log.info("export %s of tenant %s ready (%d bytes)", source.export_id, source.tenant_id, size)


def _export_of(session: Session, op_id: uuid.UUID) -> TenantExport:
    row = repository.get_export_by_operation(session, op_id)
    if row is None:
        raise PermanentError(f"operation {op_id} has no export record")
    return row


def _source(
    ctx: steps.Context,
    tenant: Tenant,
    hs: Homeserver | None,
    export_id: uuid.UUID,
    scratch: Path,
) -> exports.ExportSource:
    data_dir = ctx.backend.export_files(str(tenant.id), scratch)
    if data_dir is None:
        raise PermanentError("the tenant's homeserver has no files to export (not deployed)")
    if hs is None or hs.secrets_encrypted is None:
        raise PermanentError("the tenant has no homeserver to export")
    homeserver_secrets = ctx.box.decrypt_json(hs.secrets_encrypted)
    homeserver_secrets.pop("signing_key", None)  # exported on purpose, as signing.key
    setting_secrets = (
        ctx.box.decrypt_json(tenant.settings_secrets_encrypted)
        if tenant.settings_secrets_encrypted
        else {}
    )
    known = [*homeserver_secrets.values(), *setting_secrets.values()]
    return exports.ExportSource(
        export_id=export_id,
        tenant_id=tenant.id,
        server_name=tenant.server_name,
        data_dir=data_dir,
        database_name=hs.database_name,
        secrets=frozenset(v for v in known if isinstance(v, str) and len(v) >= 8),
        platform_users=frozenset(
            u for u in (hs.admin_user_id, f"@{PLATFORM_ADMIN_LOCALPART}:{tenant.server_name}") if u
        ),
    )


def _renewer(lease: Lease) -> Callable[[], None]:
    """Renews the tenant's lease now and then while a long archive is written."""
    last = time.monotonic()

    def keep_alive() -> None:
        nonlocal last
        if time.monotonic() - last >= _RENEW_EVERY_S:
            lease.renew()
            last = time.monotonic()

    return keep_alive
