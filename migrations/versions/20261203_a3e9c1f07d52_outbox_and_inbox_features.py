"""The outbox and its lease; the inbox's actions, tags, snooze and delete (CONTRACT.md section 10).

- `outbox`: an inbox change's event and pushes, written in the change's own transaction and
  published right after the commit by the writer, or else by the relay (app/notifications/
  outbox.py). Rows live until published, so the table stays small; its primary key is the
  publishing order, and `ix_outbox_inbox` finds one inbox's rows for its writer.
- `leases`: one process at a time relays; the lease row says which, until when.
- `notifications` gains `actions`, `tags`, `action_taken`, `acted_at`, `snoozed_until` and
  `deleted_at`. A snoozed or deleted row is in no list and no count, so the partial indexes of the
  unread and unseen rows now leave them out too; `ix_notifications_snoozed` holds only snoozed
  rows, which is what the snooze clock reads.
- `notification_tags`: a row per tag, so an all-of tag filter is an indexed lookup on SQLite and
  Postgres alike.

Revision ID: a3e9c1f07d52
Revises: 6f1c2a9d4b10
Create Date: 2026-12-03 14:10:00.000000

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "a3e9c1f07d52"
down_revision: str | Sequence[str] | None = "6f1c2a9d4b10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
OLD_UNREAD = "read_at IS NULL AND archived_at IS NULL"
OLD_UNSEEN = "seen_at IS NULL AND archived_at IS NULL"
VISIBLE = "snoozed_until IS NULL AND deleted_at IS NULL"
UNREAD = f"{OLD_UNREAD} AND {VISIBLE}"
UNSEEN = f"{OLD_UNSEEN} AND {VISIBLE}"
SNOOZED = "snoozed_until IS NOT NULL"
KEYSET = ["tenant", "user_id", "created_at", "id"]


def _partial_indexes(unread: str, unseen: str) -> None:
    op.drop_index("ix_notifications_unread", table_name="notifications")
    op.drop_index("ix_notifications_unseen", table_name="notifications")
    op.create_index("ix_notifications_unread", "notifications", KEYSET,
                    postgresql_where=sa.text(unread), sqlite_where=sa.text(unread))
    op.create_index("ix_notifications_unseen", "notifications", KEYSET,
                    postgresql_where=sa.text(unseen), sqlite_where=sa.text(unseen))


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("actions", JSON, nullable=True))
        batch.add_column(sa.Column("tags", JSON, nullable=True))
        batch.add_column(sa.Column("action_taken", sa.String(64), nullable=True))
        batch.add_column(sa.Column("acted_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("snoozed_until", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("deleted_at", sa.DateTime(), nullable=True))
    _partial_indexes(UNREAD, UNSEEN)
    op.create_index("ix_notifications_snoozed", "notifications", ["snoozed_until"],
                    postgresql_where=sa.text(SNOOZED), sqlite_where=sa.text(SNOOZED))

    op.create_table(
        "notification_tags",
        sa.Column("notification_id", sa.String(36), nullable=False),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(["notification_id"], ["notifications.id"], ondelete="CASCADE",
                                name=op.f("fk_notification_tags_notification_id_notifications")),
        sa.PrimaryKeyConstraint("notification_id", "tag", name=op.f("pk_notification_tags")),
    )
    op.create_index("ix_notification_tags_lookup", "notification_tags", ["tenant", "user_id", "tag", "notification_id"])

    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(36), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("pushes", JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index("ix_outbox_inbox", "outbox", ["tenant", "channel", "id"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index("ix_outbox_inbox", table_name="outbox")
    op.drop_table("outbox")
    op.drop_index("ix_notification_tags_lookup", table_name="notification_tags")
    op.drop_table("notification_tags")
    op.drop_index("ix_notifications_snoozed", table_name="notifications")
    _partial_indexes(OLD_UNREAD, OLD_UNSEEN)
    with op.batch_alter_table("notifications") as batch:
        for column in ("deleted_at", "snoozed_until", "acted_at", "action_taken", "tags", "actions"):
            batch.drop_column(column)
