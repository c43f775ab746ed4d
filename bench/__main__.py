"""`python -m bench`: run the benchmarks and write bench/results/{RESULTS.md,chart.png,results.json}.

    python -m bench                      # everything (20-40 min)
    python -m bench --smoke --out /tmp/b # every scenario x system at tiny N (< 3 min)
    python -m bench --scenarios fanout --systems ours-ws,socketio-node --fanout-n 1000
    python -m bench --render bench/results  # re-write RESULTS.md and chart.png from results.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

from bench import procstat, report
from bench.scenarios import GEN_CPUS, Plan, Runner
from bench.systems import SYSTEMS

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _ints(value: str) -> list[int]:
    return [int(x) for x in value.split(",") if x.strip()]


def _commit() -> str:
    """The service's code under test: HEAD, and whether app/ had uncommitted changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "app")
    except OSError:
        return "unknown"
    if not head:
        marker = root / ".bench-commit"  # a snapshot made with `git archive`
        return marker.read_text().strip() if marker.exists() else "unknown"
    return head + (" + uncommitted changes in app/" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="tiny N, short steps: checks that every scenario x system produces numbers")
    p.add_argument("--out", type=Path, default=None,
                   help="results directory (default bench/results; --smoke defaults to a temp dir)")
    p.add_argument("--scenarios", help="comma-separated: fanout,targeted,idle,resume,twoproc")
    p.add_argument("--systems", help="comma-separated: " + ",".join(SYSTEMS))
    p.add_argument("--fanout-n", type=_ints)
    p.add_argument("--targeted-n", type=_ints)
    p.add_argument("--idle-n", type=int)
    p.add_argument("--twoproc-n", type=_ints)
    p.add_argument("--step-seconds", type=float)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--bisect", type=int)
    p.add_argument("--p99-ms", type=float)
    p.add_argument("--resume-backlog", type=int, help="unrelated events (default 1,000,000)")
    p.add_argument("--resume-own", type=int, help="the client's own missed events (default 1,000)")
    p.add_argument("--resume-repeat", type=int, help="resumes timed per transport of this service (median reported; default 3)")
    p.add_argument("--run-deadline", type=float, help="seconds one run may take at most")
    p.add_argument("--render", type=Path, metavar="DIR",
                   help="only re-write DIR/RESULTS.md and DIR/chart.png from DIR/results.json (e.g. after editing NOTES.md)")
    args = p.parse_args(argv)

    if args.render:
        import orjson

        data = orjson.loads((args.render / "results.json").read_bytes())
        report.write(args.render, data["records"], data["meta"])
        print(f"results: {args.render / 'RESULTS.md'}", flush=True)
        return 0

    if args.smoke:
        import tempfile

        out = args.out or Path(tempfile.mkdtemp(prefix="bench-smoke-"))
        plan = Plan.smoke_plan(out)
    else:
        out = args.out or DEFAULT_OUT
        plan = Plan(out=out)
    for name in ("fanout_n", "targeted_n", "idle_n", "twoproc_n", "step_seconds", "max_steps", "bisect", "p99_ms",
                 "resume_backlog", "resume_own", "resume_repeat", "run_deadline"):
        value = getattr(args, name)
        if value is not None:
            setattr(plan, name, value)
    if args.scenarios:
        plan.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.systems:
        plan.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        unknown = set(plan.systems) - set(SYSTEMS)
        if unknown:
            p.error(f"unknown systems: {sorted(unknown)}")

    procstat.raise_nofile()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, GEN_CPUS)  # the orchestrator mostly sleeps; keep it off the server's core
    started = time.time()
    runner = Runner(plan)
    records = runner.run()
    versions = runner.versions
    meta = {
        "commit": _commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "duration_s": round(time.time() - started, 1),
        "smoke": plan.smoke,
        "machine": procstat.machine(),
        "versions": versions,
        "plan": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(plan).items()},
    }
    report.write(out, records, meta)
    print(f"results: {out / 'RESULTS.md'}", flush=True)
    bad = [r for r in records if r.get("status") == "error"]
    if bad:
        print(f"{len(bad)} run(s) failed; see RESULTS.md", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
