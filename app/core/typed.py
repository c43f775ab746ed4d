"""The seed's typed events: validated on publish, and ordered where order matters.

`analysis.progress` only moves forward (0-100); `refactoring.status` only moves forward through
queued → running → a final state, and never out of a final state; `system.alert` carries a
severity. Any other type is free-form. What each type's data must hold is in `app.rules` (the
publisher helper checks the same); the order is the service's alone.
"""

from __future__ import annotations

from typing import Any

from app.errors import InvalidEvent
from app.eventlog.base import Order
from app.rules import JOB_STATUS_RANK, JOB_STATUS_TYPE, PROGRESS_TYPE, TERMINAL_STATUSES, typed_problem


def validate(type_: str, data: dict[str, Any]) -> Order | None:
    problem = typed_problem(type_, data)
    if problem is not None:
        raise InvalidEvent(problem)
    if type_ == PROGRESS_TYPE:
        progress = data["progress"]
        return Order(float(progress), str(progress))
    if type_ == JOB_STATUS_TYPE:
        status = data["status"]
        return Order(JOB_STATUS_RANK[status], status, terminal=status in TERMINAL_STATUSES)
    return None
