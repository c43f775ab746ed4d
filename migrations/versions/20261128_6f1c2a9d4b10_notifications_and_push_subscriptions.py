"""Notifications, notification preferences and push subscriptions.

Indexes serve the API's queries: keyset pages of one inbox newest first (tenant, user_id,
created_at, id), the same per category, and partial indexes holding only unread / unseen rows, so
the unread list and the badge counts read what they count and nothing else. Partial indexes work
the same on SQLite (3.8+) and Postgres.

Revision ID: 6f1c2a9d4b10
Revises:
Create Date: 2026-11-28 08:00:00.000000

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "6f1c2a9d4b10"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNREAD = "read_at IS NULL AND archived_at IS NULL"
UNSEEN = "seen_at IS NULL AND archived_at IS NULL"


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "notifications",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("action_url", sa.String(2048), nullable=True),
        sa.Column("data", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=True),
        sa.Column("read_at", sa.DateTime(), nullable=True),
        sa.Column("archived_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("tenant", "idempotency_key", name=op.f("uq_notifications_tenant_idempotency_key")),
    )
    op.create_index("ix_notifications_inbox", "notifications", ["tenant", "user_id", "created_at", "id"])
    op.create_index("ix_notifications_category", "notifications", ["tenant", "user_id", "category", "created_at", "id"])
    op.create_index("ix_notifications_unread", "notifications", ["tenant", "user_id", "created_at", "id"],
                    postgresql_where=sa.text(UNREAD), sqlite_where=sa.text(UNREAD))
    op.create_index("ix_notifications_unseen", "notifications", ["tenant", "user_id", "created_at", "id"],
                    postgresql_where=sa.text(UNSEEN), sqlite_where=sa.text(UNSEEN))

    op.create_table(
        "notification_preferences",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "user_id", "category", "channel", name=op.f("pk_notification_preferences")),
    )

    op.create_table(
        "push_subscriptions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("endpoint", sa.String(2048), nullable=False),
        sa.Column("p256dh", sa.String(128), nullable=False),
        sa.Column("auth", sa.String(64), nullable=False),
        sa.Column("expiration_time", sa.DateTime(), nullable=True),
        sa.Column("user_agent", sa.String(512), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_push_subscriptions")),
        sa.UniqueConstraint("endpoint", name=op.f("uq_push_subscriptions_endpoint")),
    )
    op.create_index("ix_push_subscriptions_user", "push_subscriptions", ["tenant", "user_id"])


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("push_subscriptions")
    op.drop_table("notification_preferences")
    op.drop_table("notifications")
