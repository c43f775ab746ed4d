"""Summarize a py-spy `--format raw` (collapsed stacks) file: top functions by self and by total time.

    py-spy record -p PID -d 20 -r 200 --format raw -o prof.txt
    python -m bench.profile_summary prof.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_LOC = re.compile(r" \((?:.*/)?(site-packages/|lib/python3\.\d+/)?([^()]*?):\d+\)$")


def short(frame: str) -> str:
    m = _LOC.search(frame)
    name = frame[: m.start()] if m else frame
    where = m.group(2) if m else ""
    return f"{name} ({where})" if where else name


def summarize(path: str, top: int = 25, idle_markers: tuple[str, ...] = ("select (selectors", "_run_once", "run_forever"),
              only: str | None = "Runner.run (") -> str:
    """`only`: keep the stacks through this frame (default: the asyncio event loop's thread, not
    idle worker threads)."""
    self_t: Counter[str] = Counter()
    total_t: Counter[str] = Counter()
    samples = 0
    idle = 0
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    for line in opener(path, "rt", encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        if only and only not in stack:
            continue
        frames = [short(f) for f in stack.split(";") if f]
        samples += n
        if not frames:
            continue
        leaf = frames[-1]
        if any(leaf.startswith(m) for m in idle_markers):
            idle += n
        self_t[leaf] += n
        for f in set(frames):
            total_t[f] += n
    skip = ("_run_module_as_main", "_run_code", "<module>", "main (", "serve (", "run (", "Server.run", "asyncio_run",
            "Runner.run", "TaskHandle._run_coro")
    out = [f"{samples} samples of the event loop's thread" + (f" ({100 * idle / samples:.0f}% idle)" if idle else ""), "",
           "self time:"]
    for f, n in self_t.most_common(top):
        out.append(f"  {100 * n / samples:5.1f}%  {f}")
    out += ["", "total time (inclusive):"]
    for f, n in [(f, n) for f, n in total_t.most_common() if not f.startswith(skip)][:top]:
        out.append(f"  {100 * n / samples:5.1f}%  {f}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("path")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--all-threads", action="store_true", help="count every thread, not only the event loop's")
    args = p.parse_args()
    print(summarize(args.path, args.top, only=None if args.all_threads else "Runner.run ("))


if __name__ == "__main__":
    main()
