"""The systems under test: how to install, start, probe and stop each one, pinned to given cores.

- `ours-ws`, `ours-sse`, `ours-poll`: this service (`python -m app serve`), one transport each.
- `socketio-node`: Socket.IO 4.8 + @socket.io/redis-streams-adapter + connection state recovery
  (bench/servers/node, installed from the npm registry with `npm ci`).
- `python-socketio`: python-socketio 5 AsyncServer + AsyncRedisManager on uvicorn
  (bench/servers/pysocketio_server.py).

Every system uses the same local Redis under keys of its own (a per-run prefix), removed after.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import redis

from bench import procstat

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = Path(__file__).resolve().parent / "servers" / "node"
PYSIO_SERVER = Path(__file__).resolve().parent / "servers" / "pysocketio_server.py"
SECRET = "bench-secret-not-for-production-0123456789abcdef"
TENANT = "bench"


@dataclass(frozen=True)
class Spec:
    name: str
    impl: str  # ours | node | pysio
    transport: str  # ws | sse | poll | sio
    label: str


SYSTEMS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("ours-ws", "ours", "ws", "this service, WebSocket"),
        Spec("ours-sse", "ours", "sse", "this service, SSE"),
        Spec("ours-poll", "ours", "poll", "this service, long-polling"),
        Spec("socketio-node", "node", "sio", "Socket.IO 4.8 (Node) + Redis Streams adapter"),
        Spec("python-socketio", "pysio", "sio", "python-socketio 5 + AsyncRedisManager"),
    )
}
BASE_PORT = {"ours": 18000, "node": 18100, "pysio": 18200}
PORT_OFFSET = int(os.environ.get("BENCH_PORT_OFFSET", "0"))  # to run two benches side by side (not for numbers)


class SystemError_(RuntimeError):
    pass


@dataclass
class Running:
    spec: Spec
    run_id: str
    ports: list[int]
    procs: list[subprocess.Popen] = field(default_factory=list)  # one per port, in port order
    helpers: list[subprocess.Popen] = field(default_factory=list)  # server processes clients never reach (ingest drainers)
    logs: list[Path] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # key patterns to delete afterwards
    loadgen: dict = field(default_factory=dict)  # the `system` section of the generator's config

    @property
    def pids(self) -> list[int]:
        """Every server process (serving ones first, in port order): what the server's CPU and RSS add up."""
        return [p.pid for p in self.procs + self.helpers]


def redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_hostport() -> str:
    from urllib.parse import urlparse

    u = urlparse(redis_url())
    return f"{u.hostname or '127.0.0.1'}:{u.port or 6379}"


def _preexec(cpus: set[int]):
    def setup() -> None:
        os.setsid()  # its own process group: stopped as a whole, never by name
        procstat.raise_nofile()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def _wait_http(port: int, proc: subprocess.Popen, path: str, timeout: float, log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemError_(f"server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).split(b" ")[1:2] == [b"200"]:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemError_(f"server on port {port} not ready within {timeout}s:\n{_tail(log)}")


def _port_free_or_raise(port: int) -> None:
    """Another server on our port would answer the probe and take our load: refuse to start."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise SystemError_(f"port {port} is in use (another benchmark running?): {exc}") from None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Systems:
    """Prepares the shared bits once (a data dir, npm packages) and starts systems on demand."""

    def __init__(self, workdir: Path, *, python: str = sys.executable) -> None:
        self.workdir = workdir
        self.python = python
        self.data_dir = Path(tempfile.mkdtemp(prefix="bench-data-"))
        self._migrated = False
        self._npm_done = False
        self.redis = redis.Redis.from_url(redis_url())

    def close(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.redis.close()

    # --- preparation ---------------------------------------------------------------------

    def npm_install(self) -> None:
        if self._npm_done:
            return
        marker = NODE_DIR / "node_modules" / ".package-lock.json"
        lock = NODE_DIR / "package-lock.json"
        if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
            cmd = ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"]
            subprocess.run(cmd, cwd=NODE_DIR, check=True, timeout=300)
        self._npm_done = True

    def _ours_env(self, run_id: str, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DATABASE_", "JWT_", "LOG_"))}
        env.update({
            "REDIS_URL": redis_url(), "REDIS_PREFIX": f"bench{run_id}", "JWT_SECRET": SECRET,
            "DATA_DIR": str(self.data_dir), "PYTHONUNBUFFERED": "1",
        })
        env.update(extra)
        return env

    def migrate(self) -> None:
        if self._migrated:
            return
        env = self._ours_env("migrate", {})
        res = subprocess.run([self.python, "-m", "app", "migrate"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
        if res.returncode != 0:
            raise SystemError_(f"python -m app migrate failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        self._migrated = True

    # --- start / stop ----------------------------------------------------------------------

    def start(self, spec: Spec, run_id: str, *, processes: int = 1, cpus: list[set[int]] | None = None,
              env: dict[str, str] | None = None, drainers: int = 0) -> Running:
        """`drainers` (ours only): that many `python -m app ingest` processes drain the worker ingest
        (on the first cores of `cpus`), and the serving processes leave it to them (INGEST_DRAIN=false)."""
        cpus = cpus or [{0}] * processes
        ports = [BASE_PORT[spec.impl] + PORT_OFFSET + i for i in range(processes)]
        for port in ports:
            _port_free_or_raise(port)
        running = Running(spec, run_id, ports)
        extra = dict(env or {})
        if spec.impl == "ours":
            self.migrate()
            prefix = f"bench{run_id}"
            running.keys = [f"{prefix}:*"]
            running.loadgen = {"kind": "ours", "transport": spec.transport, "pub_stream": f"{prefix}:ingest", "prefix": prefix}
            if drainers:
                extra["INGEST_DRAIN"] = "false"
            for i, port in enumerate(ports):
                cmd = [self.python, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
                self._spawn(running, cmd, self._ours_env(run_id, extra), cpus[i % len(cpus)], "/healthz", port)
            for i in range(drainers):
                port = ports[-1] + 1 + i
                _port_free_or_raise(port)
                cmd = [self.python, "-m", "app", "ingest", "--host", "127.0.0.1", "--metrics-port", str(port),
                       "--log-level", "warning"]
                self._spawn(running, cmd, self._ours_env(run_id, extra), cpus[i % len(cpus)], "/metrics", port, helper=True)
        elif spec.impl == "node":
            self.npm_install()
            stream = f"bench-sio{run_id}"
            running.keys = [f"{stream}*"]
            running.loadgen = {"kind": "sio", "transport": "sio", "pub_stream": f"{stream}:pub", "stream": stream}
            for i, port in enumerate(ports):
                e = {**os.environ, "PORT": str(port), "REDIS_URL": redis_url(), "SIO_STREAM": stream,
                     "PUB_STREAM": f"{stream}:pub", **extra}
                self._spawn(running, ["node", str(NODE_DIR / "server.js")], e, cpus[i % len(cpus)], "/healthz", port)
        else:
            stream = f"bench-pysio{run_id}"
            running.keys = [f"{stream}*"]
            running.loadgen = {"kind": "sio", "transport": "sio", "pub_stream": f"{stream}:pub"}
            for i, port in enumerate(ports):
                e = {**os.environ, "REDIS_URL": redis_url(), "PUB_STREAM": f"{stream}:pub", "PYSIO_CHANNEL": stream, **extra}
                cmd = [self.python, str(PYSIO_SERVER), "--port", str(port)]
                self._spawn(running, cmd, e, cpus[i % len(cpus)], "/healthz", port)
        running.loadgen.update({"tenant": TENANT, "secret": SECRET, "ports": ports, "pids": running.pids,
                                "redis": redis_hostport(), "redis_pid": self.redis_pid()})
        return running

    def _spawn(self, running: Running, cmd: list[str], env: dict[str, str], cpus: set[int], probe: str, port: int,
               *, helper: bool = False) -> None:
        log = self.workdir / f"{running.spec.name}-{running.run_id}-{port}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:  # the child has its own copy of the descriptor
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    preexec_fn=_preexec(cpus))
        (running.helpers if helper else running.procs).append(proc)
        running.logs.append(log)
        try:
            _wait_http(port, proc, probe, 60, log)
        except SystemError_:
            self.stop(running)
            raise

    def stop(self, running: Running) -> None:
        for proc in running.procs + running.helpers:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        end = time.monotonic() + 15
        for proc in running.procs + running.helpers:
            try:
                proc.wait(max(end - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.cleanup(running.keys)

    def cleanup(self, patterns: list[str]) -> None:
        for pattern in patterns:
            batch = []
            for key in self.redis.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    self.redis.unlink(*batch)
                    batch = []
            if batch:
                self.redis.unlink(*batch)

    def redis_pid(self) -> int | None:
        """Redis's own pid when it runs on this machine (its CPU is reported beside the server's)."""
        try:
            pid = int(self.redis.info("server")["process_id"])
        except (redis.RedisError, KeyError, ValueError):
            return None
        return pid if os.path.exists(f"/proc/{pid}/stat") else None

    # --- versions --------------------------------------------------------------------------

    def versions(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for dist in ("fastapi", "uvicorn", "websockets", "starlette", "sse-starlette", "redis", "orjson", "uvloop",
                     "python-socketio", "python-engineio"):
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                out[dist] = "not installed"
        try:
            out["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            out["node"] = "not installed"
        for pkg in ("socket.io", "@socket.io/redis-streams-adapter", "socket.io-adapter", "engine.io", "ws", "redis"):
            pj = NODE_DIR / "node_modules" / pkg / "package.json"
            if pj.exists():
                out[f"npm:{pkg}"] = json.loads(pj.read_text())["version"]
        try:
            out["redis-server"] = self.redis.info("server")["redis_version"]
        except redis.RedisError:
            out["redis-server"] = "unknown"
        return out
