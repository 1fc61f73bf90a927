"""initial schema: plans, tenants, homeservers, operations, usage ledger; default plan

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

DEFAULT_PLAN_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")


revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("base_fee_minor", sa.BigInteger(), nullable=False),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
        sa.UniqueConstraint("code", name=op.f("uq_plans_code")),
    )
    op.create_table(
        "usage_batches",
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_usage_batches")),
    )
    op.create_table(
        "tenants",
        sa.Column("slug", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("server_name", sa.String(length=255), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "provisioning",
                "active",
                "suspended",
                "deleting",
                "deleted",
                "failed",
                name="tenantstatus",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("plan_id", sa.Uuid(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name=op.f("fk_tenants_plan_id_plans")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("server_name", name=op.f("uq_tenants_server_name")),
        sa.UniqueConstraint("slug", name=op.f("uq_tenants_slug")),
    )
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tenants_status"), ["status"], unique=False)
        batch_op.create_index("ix_tenants_created_at_id", ["created_at", "id"], unique=False)

    op.create_table(
        "billable_events",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("meter", sa.String(length=32), nullable=False),
        sa.Column("natural_id", sa.String(length=255), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_billable_events_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "meter", "natural_id", name=op.f("pk_billable_events")
        ),
    )
    op.create_table(
        "homeservers",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column(
            "desired_state",
            sa.Enum(
                "running", "stopped", name="homeserverdesiredstate", native_enum=False, length=32
            ),
            nullable=False,
        ),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("upstream_url", sa.String(length=500), nullable=True),
        sa.Column("admin_user_id", sa.String(length=255), nullable=True),
        sa.Column("admin_token_encrypted", sa.Text(), nullable=True),
        sa.Column("secrets_encrypted", sa.Text(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_homeservers_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_homeservers")),
        sa.UniqueConstraint("port", name=op.f("uq_homeservers_port")),
        sa.UniqueConstraint("tenant_id", name=op.f("uq_homeservers_tenant_id")),
    )
    op.create_table(
        "operations",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum("provision", "deprovision", name="operationkind", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column(
            "state",
            sa.Enum(
                "pending",
                "running",
                "succeeded",
                "failed",
                name="operationstate",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("steps_done", sa.JSON(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_operations_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operations")),
    )
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_operations_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_operations_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "usage_counters",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("meter", sa.String(length=32), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_usage_counters_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "meter", "period_start", name=op.f("pk_usage_counters")
        ),
    )

    plans = sa.table(
        "plans",
        sa.column("id", sa.Uuid()),
        sa.column("code", sa.String()),
        sa.column("name", sa.String()),
        sa.column("currency", sa.String()),
        sa.column("base_fee_minor", sa.BigInteger()),
        sa.column("limits", sa.JSON()),
        sa.column("is_default", sa.Boolean()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    now = datetime(2026, 11, 25, tzinfo=UTC)
    op.bulk_insert(
        plans,
        [
            {
                "id": DEFAULT_PLAN_ID,
                "code": "standard",
                "name": "Standard",
                "currency": "EUR",
                "base_fee_minor": 0,
                "limits": {
                    "max_upload_size_bytes": 50 * 1024 * 1024,
                    "rc_message_per_second": 20.0,
                    "rc_message_burst": 200,
                },
                "is_default": True,
                "created_at": now,
                "updated_at": now,
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("usage_counters")
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_operations_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_operations_state"))

    op.drop_table("operations")
    op.drop_table("homeservers")
    op.drop_table("billable_events")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_index("ix_tenants_created_at_id")
        batch_op.drop_index(batch_op.f("ix_tenants_status"))

    op.drop_table("tenants")
    op.drop_table("usage_batches")
    op.drop_table("plans")
