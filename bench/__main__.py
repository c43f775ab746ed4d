"""`python -m bench`: run the benchmarks and write bench/results/{RESULTS.md,chart.png,results.json}.

    python -m bench                      # everything (20-40 min)
    python -m bench --smoke --out /tmp/b # every scenario x system at tiny N (< 3 min)
    python -m bench --scenarios fanout --systems ours-ws,socketio-node --fanout-n 1000
    python -m bench --render bench/results  # re-write RESULTS.md and chart.png from results.json
    python -m bench --scenarios scale,storm --systems ours,socketio-node --scale-n 100000 --scale-seconds 300
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
    p.add_argument("--scenarios", help="comma-separated: fanout,targeted,idle,resume,twoproc,scale,storm")
    p.add_argument("--systems", help="comma-separated: " + ",".join(SYSTEMS) + " (ours: all three of ours-*)")
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
    p.add_argument("--scale-n", type=int, help="scale/storm: connections (default 100,000)")
    p.add_argument("--scale-processes", type=int, help="scale/storm: server processes (default ceil(N/15,000), at least 2)")
    p.add_argument("--scale-drainers", type=int, help="scale/storm: `python -m app ingest` processes for this service "
                                                     "(default 1; 0: the serving processes drain, one at a time)")
    p.add_argument("--scale-workers", type=int, help="scale/storm: generator processes (default as many as server processes)")
    p.add_argument("--scale-seconds", type=float, help="scale: traffic after all are connected (default 300)")
    p.add_argument("--scale-step-seconds", type=float, help="scale: one step of that traffic (default 30)")
    p.add_argument("--scale-ramp", help="scale: connection levels as fractions of N with a short traffic window each "
                                        "(default 0.25,0.5,1)")
    p.add_argument("--scale-ramp-seconds", type=float, help="scale: traffic at each ramp level (default 30)")
    p.add_argument("--scale-rate", type=float, help="scale: published events/s (default 1,160)")
    p.add_argument("--scale-churn", type=float, help="scale: share of tabs changing repository per second (default 0.01)")
    p.add_argument("--storm-seconds", type=float, help="storm: longest wait for every victim to resume (default 180)")
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
    for name, attr in (("scale_n", "n"), ("scale_processes", "processes"), ("scale_workers", "workers"),
                       ("scale_drainers", "drainers"),
                       ("scale_seconds", "seconds"), ("scale_step_seconds", "step_seconds"), ("scale_rate", "rate"),
                       ("scale_ramp_seconds", "ramp_seconds"), ("scale_churn", "churn"), ("storm_seconds", "storm_seconds")):
        value = getattr(args, name)
        if value is not None:
            setattr(plan.scale, attr, value)
    if args.scale_ramp:
        plan.scale.ramp = [float(x) for x in args.scale_ramp.split(",") if x.strip()]
    if args.scenarios:
        plan.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.systems:
        plan.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
        if "ours" in plan.systems:
            i = plan.systems.index("ours")
            plan.systems[i : i + 1] = [s for s in ("ours-ws", "ours-sse", "ours-poll") if s not in plan.systems]
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
