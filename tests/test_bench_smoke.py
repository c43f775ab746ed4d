"""`python -m bench --smoke`: every scenario x system runs at tiny N and produces numbers.

Timings are not asserted (a smoke run is far too small for them to mean anything); only that the
harness starts each system (this service, Socket.IO on Node installed with `npm ci`,
python-socketio), drives it with the load generator and writes RESULTS.md, chart.png and
results.json with a number in every cell that should have one. Takes about two minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, skip_unless_ci

SYSTEMS = ("ours-ws", "ours-sse", "ours-poll", "socketio-node", "python-socketio")


def _redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"), socket_timeout=2).ping())
    except redis.RedisError:
        return False


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_bench_smoke_produces_numbers_for_every_scenario_and_system(tmp_path: Path) -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing or not _redis_up():
        why = f"missing {missing}" if missing else "Redis is not reachable"
        skip_unless_ci(f"the bench smoke needs Node.js, npm and Redis: {why}")
    env = {**os.environ}
    if os.environ.get("TEST_REDIS_URL"):
        env["BENCH_REDIS_URL"] = os.environ["TEST_REDIS_URL"]
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (tmp_path / "RESULTS.md").read_text().startswith("# Benchmarks")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = json.loads((tmp_path / "results.json").read_text())["records"]
    seen = {(r["scenario"], r["system"], r["processes"]) for r in records}

    expected = {(s, name, 1) for s in ("fanout", "targeted", "idle", "resume") for name in SYSTEMS}
    expected |= {("twoproc", name, 2) for name in ("ours-ws", "socketio-node", "python-socketio")}
    assert expected <= seen, f"runs missing: {sorted(expected - seen)}"

    for r in records:
        tag = f"{r['scenario']} {r['system']}"
        if r["scenario"] == "resume" and r["system"] == "python-socketio":
            assert r["status"] == "unsupported", tag  # no history, no recovery: said, not measured
            continue
        assert r["status"] == "ok", f"{tag}: {r.get('error')}"
        if r["scenario"] in ("fanout", "targeted", "twoproc"):
            assert r["connect"]["connected"] == r["n"], tag
            assert r["steps"], tag
            for step in r["steps"]:
                assert step["received"] > 0, tag
                for key in ("p50_ms", "p99_ms", "p999_ms", "delivered_per_s", "server_cpu_pct", "server_rss_mb", "gen_cpu_pct"):
                    assert _number(step[key]), f"{tag}: {key} = {step[key]!r}"
        elif r["scenario"] == "idle":
            assert r["idle"]["connected"] == r["n"], tag
            assert _number(r["idle"]["kb_per_connection"]), tag
        elif r["scenario"] == "resume":
            assert r["resume"]["replayed"] == r["resume"]["expected"] > 0, tag
            assert _number(r["resume"]["ms"]), tag
