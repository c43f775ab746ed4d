"""Python's cyclic garbage collector in a process that holds many connections.

Each idle connection is a few dozen container objects that live for minutes or hours; with
CPython's default thresholds the collector re-walks all of them over and over (a py-spy profile
of 14,000 connections under traffic: 36% of the event loop's time in `gc_collect_main`). What
this module does, in `python -m app serve` only (tests build many apps in one process):
- counts the time spent collecting, by generation (`realtime_gc_seconds_total`), so an operator
  sees it;
- freezes what exists once the app is built (modules, classes, settings: never garbage), so no
  collection walks it again;
- applies GC_THRESHOLDS: the youngest generation collected every N allocations (CPython: 700),
  the older ones every M collections of the one below.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Counter

GC_SECONDS = Counter("realtime_gc_seconds_total", "Time spent in Python's cyclic garbage collector (the event loop "
                     "stands still meanwhile), by generation", ["generation"])
_BY_GENERATION = [GC_SECONDS.labels(generation=str(g)) for g in range(3)]
_started = [0.0]


def _timed(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _BY_GENERATION[info["generation"]].inc(time.perf_counter() - _started[0])


def count_collections() -> None:
    """Time every collection from now on (idempotent)."""
    if _timed not in gc.callbacks:
        gc.callbacks.append(_timed)


def tune(thresholds: tuple[int, int, int]) -> None:
    """Freeze what exists now and apply the thresholds; call once the app is built."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
