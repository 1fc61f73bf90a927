"""webhook_deliveries: (state, updated_at) index for the retention sweep

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The retention sweep deletes ended deliveries by their last change: without this it reads
    # every delivery once an hour.
    op.create_index(
        "ix_webhook_deliveries_state_updated_at", "webhook_deliveries", ["state", "updated_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_state_updated_at", table_name="webhook_deliveries")
