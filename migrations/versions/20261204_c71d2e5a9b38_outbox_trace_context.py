"""The outbox keeps its caller's trace context.

A notification's event is published after its commit, by its writer or, later, by the relay on
whichever process holds the lease. With TRACING on, the publish span is a child of the request
that made the change: `traceparent` and `tracestate` are that request's W3C headers, checked and
bounded (app.tracing.parent), stored with the row until it is published. Both nullable: rows
written with tracing off, or without a caller's context, carry none.

Revision ID: c71d2e5a9b38
Revises: a3e9c1f07d52
Create Date: 2026-12-04 01:40:00.000000

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c71d2e5a9b38"
down_revision: str | Sequence[str] | None = "a3e9c1f07d52"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(128), nullable=True))
        batch.add_column(sa.Column("tracestate", sa.String(512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("tracestate")
        batch.drop_column("traceparent")
