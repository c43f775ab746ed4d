"""CPU and memory of processes, read from /proc; file-descriptor limits; the machine's description."""

from __future__ import annotations

import os
import platform
import resource
import time

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15)
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class CpuMeter:
    """CPU use of a set of processes between `mark()` and `percent()` (100 = one core)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = list(pids)
        self._t = time.monotonic()
        self._cpu = self._total()

    def _total(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def mark(self) -> None:
        self._t = time.monotonic()
        self._cpu = self._total()

    def percent(self) -> float:
        wall = time.monotonic() - self._t
        return 100.0 * (self._total() - self._cpu) / wall if wall > 0 else 0.0

    def rss_kb(self) -> int:
        return sum(rss_kb(p) for p in self.pids)

    def rss_mb(self) -> float:
        return self.rss_kb() / 1024


class SystemCpu:
    """Whole-machine busy CPU between `mark()` and `percent()` (100 = one core), from /proc/stat."""

    def __init__(self) -> None:
        self.mark()

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / _TICK

    def mark(self) -> None:
        self._t = time.monotonic()
        self._busy0 = self._busy()

    def percent(self) -> float:
        wall = time.monotonic() - self._t
        return 100.0 * (self._busy() - self._busy0) / wall if wall > 0 else 0.0


def raise_nofile(target: int = 200_000) -> int:
    """Raise this process's open-file limit as far as allowed (root may lift the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            nr_open = int(f.read())
    except OSError:
        nr_open = hard
    for want in (min(target, nr_open), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
            return want
        except (ValueError, OSError):
            continue
    return soft


def machine() -> dict[str, object]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "ram_gib": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version()}
