"""The garbage collector under `python -m app serve` (app/gc_tuning.py): its time is counted by
generation, what exists at start is frozen, GC_THRESHOLDS applies, and a threshold that would
switch collection off (0) is refused at start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
from pydantic import ValidationError

from app.settings import Settings
from tests.conftest import ROOT, LiveServer


def test_tune_freezes_what_exists_and_applies_the_thresholds() -> None:
    """In a process of its own: freezing and thresholds are process-wide."""
    script = ("import gc; from app import gc_tuning; gc_tuning.count_collections(); gc_tuning.tune((1234, 5, 7)); "
              "gc.collect(0); from app.gc_tuning import GC_SECONDS; "
              "print(gc.get_threshold(), gc.get_freeze_count() > 1000, "
              "[GC_SECONDS.labels(generation=g)._value.get() > 0 for g in '02'])")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["(1234,", "5,", "7)", "True", "[True,", "True]"], out.stdout + out.stderr


def test_served_metrics_count_collections(live_servers: Callable[..., LiveServer]) -> None:
    server = live_servers(GC_THRESHOLDS="[1000,5,7]")
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    # the collection made when the app was built (before serving) is counted: the counting came first
    full = [line for line in metrics.splitlines() if line.startswith('realtime_gc_seconds_total{generation="2"}')]
    assert full and float(full[0].split()[-1]) > 0, full


@pytest.mark.parametrize("value", ["[0,10,10]", "[700,10]", "[700,-1,10]"])
def test_thresholds_that_would_turn_collection_off_are_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GC_THRESHOLDS", value)
    with pytest.raises(ValidationError):
        Settings()
