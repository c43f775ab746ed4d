"""The seed's typed events: validated on publish, and ordered where order matters.

`analysis.progress` only moves forward (0-100); `refactoring.status` only moves forward through
queued → running → a final state, and never out of a final state; `system.alert` carries a
severity. Any other type is free-form.
"""

from __future__ import annotations

from typing import Any

from app.errors import InvalidEvent
from app.eventlog.base import Order

STATUS_RANK = {"queued": 0, "running": 1, "completed": 2, "failed": 2, "cancelled": 2}
SEVERITIES = ("info", "warning", "critical")


def validate(type_: str, data: dict[str, Any]) -> Order | None:
    if type_ == "analysis.progress":
        progress = data.get("progress")
        if isinstance(progress, bool) or not isinstance(progress, int | float) or not 0 <= progress <= 100:
            raise InvalidEvent("analysis.progress needs data.progress, a number from 0 to 100")
        return Order(float(progress), str(progress))
    if type_ == "refactoring.status":
        status = data.get("status")
        if status not in STATUS_RANK:
            raise InvalidEvent(f"refactoring.status needs data.status in {', '.join(STATUS_RANK)}")
        return Order(STATUS_RANK[status], status, terminal=STATUS_RANK[status] == 2)
    if type_ == "system.alert" and data.get("severity") not in SEVERITIES:
        raise InvalidEvent(f"system.alert needs data.severity in {', '.join(SEVERITIES)}")
    return None
