"""The scenarios, each a sequence of runs: start a system pinned to its core(s), drive it with the
load generator (a separate process pinned to another core), read the numbers, stop it.

- fanout: N clients on one tenant channel; the publish rate doubles until p99 passes the limit
  (or a delivery is missing), then bisects; the score is the highest rate held.
- targeted: N clients each on its own user channel; events spread round-robin over them; same
  stepping (the rate is events/s, each delivered once).
- idle: RSS per idle connection at N (server RSS after connecting minus before, divided by N).
- resume: one client missed its own events inside a large unrelated backlog; time from opening
  the connection to receiving all of them.
- twoproc: the fan-out again with two server processes (one per core), clients split between
  them; the generator then shares the second core (see the validity notes).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench import backlog, procstat
from bench.scale import ScaleConf, ScaleRun
from bench.systems import SYSTEMS, TENANT, Running, Spec, Systems

# the scale/storm system for this service: its three transports at once (85/10/5), not in SYSTEMS
# (the other scenarios take one transport each); `--systems ours` or any ours-* selects it
SCALE_OURS = Spec("ours", "ours", "mixed", "this service: 85% WebSocket, 10% SSE, 5% long-polling")

SERVER_CPUS = [{0}]
GEN_CPUS = {1}


@dataclass
class Plan:
    out: Path
    smoke: bool = False
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    scenarios: list[str] = field(default_factory=lambda: ["fanout", "targeted", "idle", "resume", "twoproc", "scale", "storm"])
    fanout_n: list[int] = field(default_factory=lambda: [1000, 5000, 10000])
    targeted_n: list[int] = field(default_factory=lambda: [1000, 5000])
    idle_n: int = 10000
    twoproc_n: list[int] = field(default_factory=lambda: [5000])
    step_seconds: float = 5.0
    max_steps: int = 10
    bisect: int = 2
    p99_ms: float = 100.0
    fanout_start_deliveries: float = 2000.0  # first step: this many deliveries/s (rate = this / N)
    targeted_start_rate: float = 500.0
    resume_backlog: int = 1_000_000
    resume_own: int = 1000
    resume_repeat: int = 3
    run_deadline: float = 240.0
    connect_concurrency: int = 50
    pad: int = 60
    # scale / storm (bench/scale.py): this service runs as one mixed-transport system ("ours")
    scale: ScaleConf = field(default_factory=ScaleConf)

    @classmethod
    def smoke_plan(cls, out: Path) -> Plan:
        return cls(out=out, smoke=True, fanout_n=[20], targeted_n=[20], idle_n=40, twoproc_n=[20], step_seconds=0.4,
                   max_steps=2, bisect=0, fanout_start_deliveries=200, targeted_start_rate=50, resume_backlog=2000,
                   resume_own=50, resume_repeat=1, run_deadline=60,
                   scale=ScaleConf(n=300, processes=2, workers=2, ramp=[0.5, 1.0], ramp_seconds=2, idle_seconds=2,
                                   seconds=4, step_seconds=2, rate=100, churn=0.02, storm_seconds=30, settle_seconds=1,
                                   deadline=240))


class Runner:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.raw = plan.out / "raw"
        self.raw.mkdir(parents=True, exist_ok=True)
        self.systems = Systems(self.raw)
        self.records: list[dict] = []
        self.seq = 0
        self.versions: dict[str, str] = {}
        self._ours_backlog: tuple[str, dict] | None = None
        self._resume_keys: set[str] = set()
        self.started = time.time()

    def log(self, msg: str) -> None:
        print(f"[bench {time.time() - self.started:7.1f}s] {msg}", flush=True)

    def _run_id(self) -> str:
        self.seq += 1
        return f"{os.getpid()}x{self.seq}"

    # --- plumbing --------------------------------------------------------------------------

    def generator(self, running: Running, conf: dict, tag: str, cpus: set[int] = GEN_CPUS) -> dict:
        p = self.plan
        conf = {"system": running.loadgen, "cpus": sorted(cpus), "deadline": p.run_deadline, "pad": p.pad,
                "connect_concurrency": p.connect_concurrency, "p99_ms": p.p99_ms,
                "drain_seconds": 1.0 if p.smoke else 3.0, "quiet_wait": 0 if p.smoke else 15, **conf}
        cfg = self.raw / f"{tag}.conf.json"
        res = self.raw / f"{tag}.result.json"
        cfg.write_bytes(orjson.dumps(conf, option=orjson.OPT_INDENT_2))
        res.unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, "-m", "bench.loadgen", str(cfg), str(res)], cwd=Path(__file__).parent.parent,
                              capture_output=True, text=True, timeout=p.run_deadline + 60)
        if proc.returncode != 0 or not res.exists():
            raise RuntimeError(f"load generator failed ({proc.returncode}): {proc.stderr[-1500:]}")
        return orjson.loads(res.read_bytes())

    def record(self, scenario: str, spec: Spec | str, n: int | None, processes: int, **data: object) -> dict:
        name = spec.name if isinstance(spec, Spec) else spec
        rec = {"scenario": scenario, "system": name, "n": n, "processes": processes, **data}
        self.records.append(rec)
        (self.raw / "records.json").write_bytes(orjson.dumps(self.records, option=orjson.OPT_INDENT_2))
        return rec

    def guarded(self, scenario: str, spec: Spec, n: int | None, processes: int, fn) -> None:  # type: ignore[no-untyped-def]
        self.log(f"{scenario} {spec.name} n={n} processes={processes}")
        try:
            data = fn()
            rec = self.record(scenario, spec, n, processes, status="ok", **data)
            self.log(f"  -> {summary(rec)}")
        except Exception as exc:  # one failing run must not lose the others
            self.log(f"  -> ERROR {type(exc).__name__}: {exc}")
            self.record(scenario, spec, n, processes, status="error", error=f"{type(exc).__name__}: {exc}"[:3000],
                        trace=traceback.format_exc()[-3000:])

    # --- scenarios -------------------------------------------------------------------------

    def stepped(self, scenario: str, spec: Spec, n: int, processes: int = 1) -> None:
        p = self.plan

        def run() -> dict:
            run_id = self._run_id()
            cpus = SERVER_CPUS if processes == 1 else [{0}, {1}]
            running = self.systems.start(spec, run_id, processes=processes, cpus=cpus)
            try:
                time.sleep(0.5)
                base = procstat.CpuMeter(running.pids).rss_kb()
                start = p.targeted_start_rate if scenario == "targeted" else max(p.fanout_start_deliveries / n, 0.5)
                conf = {"mode": "targeted" if scenario == "targeted" else "fanout", "clients": n,
                        "steps": {"start_rate": start, "factor": 2, "seconds": p.step_seconds, "max_steps": p.max_steps,
                                  "bisect": p.bisect, "lower": 0 if p.smoke else 3},
                        "settle_seconds": 0.3 if p.smoke else 2}
                out = self.generator(running, conf, f"{scenario}-{spec.name}-{n}-{processes}p")
                out["baseline_rss_mb"] = round(base / 1024, 1)
                return out
            finally:
                self.systems.stop(running)

        self.guarded(scenario, spec, n, processes, run)

    def idle(self, spec: Spec, n: int) -> None:
        p = self.plan

        def run() -> dict:
            running = self.systems.start(spec, self._run_id(), cpus=SERVER_CPUS)
            try:
                time.sleep(1.0)
                base = procstat.CpuMeter(running.pids).rss_kb()
                conf = {"mode": "idle", "clients": n, "baseline_rss_kb": base, "idle_settle": 1 if p.smoke else 5,
                        "poll_timeout": 25}
                return self.generator(running, conf, f"idle-{spec.name}-{n}")
            finally:
                self.systems.stop(running)

        self.guarded("idle", spec, n, 1, run)

    def resume(self, spec: Spec) -> None:
        p = self.plan
        if spec.impl == "pysio":
            self.log("resume python-socketio: unsupported (no history, no recovery)")
            self.record("resume", spec, p.resume_own, 1, status="unsupported",
                        note="python-socketio keeps no history and has no connection state recovery: a missed event is lost")
            return
        self.guarded("resume", spec, p.resume_own, 1,
                     lambda: self._resume_ours(spec) if spec.impl == "ours" else self._resume_node(spec))

    def _resume_ours(self, spec: Spec) -> dict:
        """One backlog (built once, through the log's API) serves the three transports in turn."""
        p = self.plan
        env = {"LOG_MAX_EVENTS": str(max(2 * (p.resume_backlog + p.resume_own), 1000))}
        if self._ours_backlog is None:
            run_id = self._run_id()
            self._resume_keys.add(f"bench{run_id}:*")
            self.systems.migrate()
            from app.settings import Settings

            settings_env = self.systems._ours_env(run_id, env)
            settings = Settings(**{k.lower(): v for k, v in settings_env.items()
                                   if k in ("REDIS_URL", "REDIS_PREFIX", "JWT_SECRET", "DATA_DIR", "LOG_MAX_EVENTS")})
            info = asyncio.run(backlog.build_ours(settings, TENANT, "r0", p.resume_backlog, p.resume_own, p.pad))
            self.log(f"  backlog built: {info}")
            self._ours_backlog = (run_id, info)
        run_id, info = self._ours_backlog
        running = self.systems.start(spec, run_id, cpus=SERVER_CPUS, env=env)
        try:
            time.sleep(0.5)
            conf = {"mode": "resume", "resume": {"user": "r0", "since": info["since"], "expect": p.resume_own,
                                                 "repeat": p.resume_repeat, "timeout": 60}}
            out = self.generator(running, conf, f"resume-{spec.name}")
            out["backlog"] = info
            return out
        finally:
            self._resume_keys.update(running.keys)
            running.keys = []  # the next transport reads the same backlog; removed at the end
            self.systems.stop(running)

    def _resume_node(self, spec: Spec) -> dict:
        p = self.plan
        run_id = self._run_id()
        env = {"SIO_MAXLEN": str(max(2 * (p.resume_backlog + p.resume_own), 1000)), "SIO_RECOVERY_MS": "900000"}
        running = self.systems.start(spec, run_id, cpus=SERVER_CPUS, env=env)
        keys = running.keys
        try:
            prime = self.generator(running, {"mode": "sio_prime", "resume": {"user": "r0"}}, f"resume-prime-{spec.name}")["prime"]
            if not prime.get("pid") or not prime.get("offset"):
                raise RuntimeError(f"Socket.IO session not primed: {prime}")
            time.sleep(1.0)  # the disconnect persists the session
        finally:
            running.keys = []  # keep the session and the stream across the restart
            self.systems.stop(running)
            running.keys = keys
        info = backlog.build_socketio(self.systems.redis, running.loadgen["stream"], "r0", p.resume_backlog, p.resume_own, p.pad)
        self.log(f"  backlog built: {info}")
        running = self.systems.start(spec, run_id, cpus=SERVER_CPUS, env=env)
        try:
            time.sleep(0.5)
            conf = {"mode": "resume", "resume": {"user": "r0", "pid": prime["pid"], "offset": prime["offset"],
                                                 "expect": p.resume_own, "repeat": 1, "timeout": 60}}
            out = self.generator(running, conf, f"resume-{spec.name}")
            out["backlog"] = info
            out["notes"] = [
                *out.get("notes", []),
                f"adapter maxLen raised to {env['SIO_MAXLEN']} (default 10,000 would have trimmed the offset: no recovery)",
                "recovery session kept 15 min (default 2 min) while the backlog is written"]
            return out
        finally:
            self.systems.stop(running)

    # --- everything ------------------------------------------------------------------------

    def run(self) -> list[dict]:
        p = self.plan
        specs = [SYSTEMS[name] for name in p.systems]
        if any(s.impl == "node" for s in specs):
            self.log("npm ci (bench/servers/node)")
            self.systems.npm_install()
        self.versions = self.systems.versions()
        try:
            if "fanout" in p.scenarios:
                for n in p.fanout_n:
                    for spec in specs:
                        self.stepped("fanout", spec, n)
            if "targeted" in p.scenarios:
                for n in p.targeted_n:
                    for spec in specs:
                        self.stepped("targeted", spec, n)
            if "idle" in p.scenarios:
                for spec in specs:
                    self.idle(spec, p.idle_n)
            if "resume" in p.scenarios:
                try:
                    for spec in specs:
                        self.resume(spec)
                finally:
                    self.systems.cleanup(sorted(self._resume_keys))
            if "twoproc" in p.scenarios:
                for n in p.twoproc_n:
                    for spec in specs:
                        if spec.name in ("ours-ws", "socketio-node", "python-socketio"):
                            self.stepped("twoproc", spec, n, processes=2)
            if "scale" in p.scenarios or "storm" in p.scenarios:
                self.scale(specs)
        finally:
            self.systems.close()
        return self.records

    def scale(self, specs: list[Spec]) -> None:
        """One run per system: this service (its three transports mixed: any ours-* selects it) and
        Socket.IO-Node; python-socketio is not part of issue 12's comparison."""
        p = self.plan
        storm = "storm" in p.scenarios
        chosen: list[Spec] = []
        if any(s.impl == "ours" for s in specs):
            chosen.append(SCALE_OURS)
        chosen += [s for s in specs if s.impl == "node"]
        for spec in chosen:
            name = f"scale{'+storm' if storm else ''} {spec.name} n={p.scale.n} processes={p.scale.n_processes}"
            self.log(name)
            try:
                recs = ScaleRun(self.systems, spec, p.scale, self.raw, self._run_id(), storm, log=self.log).run()
                for rec in recs:
                    if "scale" not in p.scenarios and rec["scenario"] == "scale":
                        continue
                    scenario = rec.pop("scenario")
                    n, procs = rec.pop("n"), rec.pop("processes")
                    out = self.record(scenario, spec, n, procs, status="ok", **rec)
                    self.log(f"  -> {scenario}: {summary(out)}")
            except Exception as exc:  # one failing run must not lose the others
                self.log(f"  -> ERROR {type(exc).__name__}: {exc}")
                for scenario in (["scale"] if "scale" in p.scenarios else []) + (["storm"] if storm else []):
                    self.record(scenario, spec, p.scale.n, p.scale.n_processes, status="error",
                                error=f"{type(exc).__name__}: {exc}"[:3000], trace=traceback.format_exc()[-3000:])


def summary(rec: dict) -> str:
    if rec.get("status") != "ok":
        return rec.get("status", "?")
    if rec["scenario"] == "scale":
        lat, acc = rec["latency"], rec["accounting"]
        return (f"{rec['connect']['connected']:,} connected in {rec['connect']['seconds']}s; KB/conn {rec['kb_per_conn']}; "
                f"idle CPU {rec['idle_cpu_pct']}%; p50/p99/p99.9 {lat['p50_ms']}/{lat['p99_ms']}/{lat['p999_ms']} ms; "
                f"due {acc['due']:,} missing {acc['missing']:,} dup {acc['duplicates_run']} ooo {acc['out_of_order_run']} "
                f"-> {'exactly once' if acc['ok'] else 'NOT exactly once'}")
    if rec["scenario"] == "storm":
        acc = rec["accounting"]
        return (f"{rec['victims']:,} victims, {rec['resumed']:,} resumed (median {rec['resume_median_ms']} ms, last "
                f"{rec['resume_last_ms']} ms); due {acc['due']:,} missing {acc['missing']:,}; 5xx {rec['http_5xx']}, "
                f"refused/reset {rec['refused_or_reset']} -> {'exactly once' if acc['ok'] else 'NOT exactly once'}")
    if "best" in rec:
        b = rec["best"]
        steps = len(rec.get("steps", []))
        if not b:
            return f"no rate held ({steps} steps; connected {rec.get('connect', {}).get('connected')})"
        return (f"held {b['rate']}/s -> {b['delivered_per_s']} msg/s p50 {b['p50_ms']} p99 {b['p99_ms']} ms, "
                f"server cpu {b['server_cpu_pct']}% gen cpu {b['gen_cpu_pct']}% ({steps} steps)")
    if "idle" in rec:
        return f"{rec['idle']['kb_per_connection']} KB/conn ({rec['idle']['connected']} connected)"
    if "resume" in rec:
        return f"{rec['resume']['ms']} ms for {rec['resume']['replayed']}/{rec['resume']['expected']}"
    return "ok"


def tmp_out() -> Path:
    return Path(tempfile.mkdtemp(prefix="bench-"))
