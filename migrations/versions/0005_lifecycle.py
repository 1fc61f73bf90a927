"""lifecycle: homeserver settings, operation history, per-tenant databases, exports

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(
            sa.Column("homeserver_settings", sa.JSON(), nullable=False, server_default="{}")
        )
        batch_op.add_column(sa.Column("settings_secrets_encrypted", sa.Text(), nullable=True))
    with op.batch_alter_table("operations") as batch_op:
        batch_op.add_column(sa.Column("history", sa.JSON(), nullable=False, server_default="[]"))
    with op.batch_alter_table("homeservers") as batch_op:
        batch_op.add_column(sa.Column("database_name", sa.String(length=63), nullable=True))
    op.create_table(
        "tenant_exports",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("operation_id", sa.Uuid(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "pending",
                "ready",
                "failed",
                "expired",
                name="exportstate",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("path", sa.String(length=1000), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_exports_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["operation_id"],
            ["operations.id"],
            name=op.f("fk_tenant_exports_operation_id_operations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_exports")),
        sa.UniqueConstraint("operation_id", name=op.f("uq_tenant_exports_operation_id")),
    )
    op.create_index(op.f("ix_tenant_exports_tenant_id"), "tenant_exports", ["tenant_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_tenant_exports_tenant_id"), table_name="tenant_exports")
    op.drop_table("tenant_exports")
    with op.batch_alter_table("homeservers") as batch_op:
        batch_op.drop_column("database_name")
    with op.batch_alter_table("operations") as batch_op:
        batch_op.drop_column("history")
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("settings_secrets_encrypted")
        batch_op.drop_column("homeserver_settings")
