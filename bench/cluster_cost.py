"""One Redis against a three-primary Redis Cluster, with the service on both (issue 14).

Publish throughput, publish→receive latency, operations per Redis node and how the partitions
spread over the cluster's primaries, and what `REDIS_WAIT_REPLICAS=1` costs on each.

    python -m bench.cluster_cost [--rounds 2] [--configs redis-p1,redis-p12,cluster-p12,...] [--out DIR]
    python -m bench.cluster_cost --smoke --out DIR      # every configuration once, at tiny size

The Redis servers are the test suite's own (tests/redis_servers.py), from the same redis-server
binary with the same persistence settings (nothing on disk, diskless replication), on free ports
in a temporary directory, removed afterwards; the machine's own Redis is not touched:

- one Redis: a primary and one replica (`SentinelSet`'s data nodes, without its Sentinels), so the
  service's REDIS_URL is `redis://` on the primary and WAIT 1 has a replica to wait for;
- the cluster: `ClusterSet`, six nodes, three primaries each with one replica.

Both sets run for the whole benchmark (the one not measured idles). Each configuration run starts
two `python -m app serve` processes (tests/conftest.py `LiveServer`) with its REDIS_URL,
REDIS_PARTITIONS and REDIS_WAIT_REPLICAS, opens one WebSocket per tenant on the second process
(bench/loadgen.py's raw client, timed at the kernel's receive timestamp), then:

1. throughput: `--publishers` HTTP/1.1 keep-alive connections, half to each process, publish
   back to back (`POST /v1/events`, one service token per tenant, tenants taken in turn) for
   `--seconds`; appends/s acknowledged (202), every one checked received; the Redis nodes'
   `INFO commandstats` / `total_commands_processed` before and after (operations per node), and
   CPU per process group (servers, each Redis node, this generator, the rest of the machine);
2. latency: `--rate` publishes/s, paced, to the first process only, for `--latency-seconds`;
   publish→receive (the time stamped into the event's data when the request is written → the
   WebSocket frame's receive timestamp on the other process) p50/p99, and the POST's answer time.

Configurations are run interleaved (A B C ... A B C ...) `--rounds` times, because absolute
figures drift on a shared machine: on a 2-core machine the Redis nodes, the servers and this
generator share the cores, so the cluster cannot show more throughput than those cores allow.
A configuration the settings refuse (WAIT with a cluster URL, until that is supported) is skipped,
saying why. Keys: every run FLUSHALLs the nodes it used (the servers are this run's own).

Take the machine lock: `flock -x /tmp/machine.lock python -m bench.cluster_cost ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis as sync_redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.cluster import key_slot  # noqa: E402

from app.auth import mint_token  # noqa: E402
from app.keys import Keys, partition_of  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench import procstat  # noqa: E402
from bench.loadgen import Recorder, WSClient, percentiles  # noqa: E402
from tests.conftest import LiveServer, free_port  # noqa: E402
from tests.redis_servers import ClusterSet, Node, SentinelSet  # noqa: E402

SECRET = "cluster-cost-bench-secret-cluster-cost-bench"
WARM, THROUGHPUT, LATENCY = 0, 1, 2  # the `"s"` stamped into each event's data: which phase sent it


@dataclass(frozen=True)
class Config:
    name: str
    engine: str  # "redis" (one primary + its replica) | "cluster"
    partitions: int
    wait: int = 0


CONFIGS: dict[str, Config] = {c.name: c for c in (
    Config("redis-p1", "redis", 1),
    Config("redis-p12", "redis", 12),
    Config("cluster-p12", "cluster", 12),
    Config("cluster-p24", "cluster", 24),
    Config("redis-p1-wait1", "redis", 1, wait=1),
    Config("cluster-p12-wait1", "cluster", 12, wait=1),
)}
DEFAULT_CONFIGS = ",".join(CONFIGS)


# --------------------------------------------------------------------------------------------
# the Redis servers


class OneRedis:
    """One primary and one replica: the Sentinel set's data nodes (its own config, so the same
    settings as every other set the suite starts), without its Sentinels."""

    def __init__(self, directory: Path) -> None:
        self.set = SentinelSet(directory)

    def start(self) -> OneRedis:
        try:
            primary, replica = free_port(), free_port()
            self.set.nodes[primary] = Node(self.set.directory, primary, self.set._data_config(None)).start()
            self.set.nodes[replica] = Node(self.set.directory, replica, self.set._data_config(primary)).start()
            self.set.wait_replicas(1, port=primary)
            self.primary, self.replica = primary, replica
        except BaseException:
            self.set.stop()
            raise
        return self

    def stop(self) -> None:
        self.set.stop()

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.primary}/0"

    @property
    def nodes(self) -> dict[int, Node]:
        return self.set.nodes

    def roles(self) -> dict[int, str]:
        return {self.primary: "primary", self.replica: "replica"}


def _info(node: Node, section: str) -> dict[str, Any]:
    client = node.client(decode_responses=True)
    try:
        return dict(client.info(section))
    finally:
        client.close()


def node_snapshot(nodes: dict[int, Node]) -> dict[int, dict[str, Any]]:
    """Per node: commands processed, calls per command, CPU seconds (from /proc)."""
    out: dict[int, dict[str, Any]] = {}
    for port, node in nodes.items():
        stats = _info(node, "stats")
        commands = {name.removeprefix("cmdstat_"): int(value["calls"])
                    for name, value in _info(node, "commandstats").items() if isinstance(value, dict)}
        pid = node.process.pid if node.process is not None else 0
        out[port] = {"total": int(stats["total_commands_processed"]), "commands": commands, "cpu": procstat.cpu_seconds(pid)}
    return out


def node_deltas(before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]], seconds: float,
                roles: dict[int, str]) -> list[dict[str, Any]]:
    rows = []
    for port in sorted(after, key=lambda p: (roles.get(p, "?") != "primary", p)):
        a, b = after[port], before[port]
        calls = Counter({name: n - b["commands"].get(name, 0) for name, n in a["commands"].items()})
        calls = +calls  # drop the zeros
        total = a["total"] - b["total"]
        rows.append({"port": port, "role": roles.get(port, "?"), "commands": total,
                     "commands_per_s": round(total / seconds, 1), "evalsha": calls.get("evalsha", 0),
                     "getkeys": calls.get("command|getkeys", 0),  # redis-py's cluster asks the keys of XREAD
                     "xread": calls.get("xread", 0),
                     "cpu_pct": round(100 * (a["cpu"] - b["cpu"]) / seconds, 1),
                     "top": dict(calls.most_common(8))})
    return rows


def flushall(nodes: dict[int, Node], ports: list[int]) -> None:
    for port in ports:
        client = nodes[port].client()
        try:
            client.flushall()
        except sync_redis.RedisError:
            pass  # a replica (READONLY): its primary's flush reaches it
        finally:
            client.close()


# --------------------------------------------------------------------------------------------
# the publishers: raw HTTP/1.1 keep-alive, one request in flight per connection


_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


class HttpConnection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection; `post` writes one request and awaits its answer."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.WriteTransport | None = None

    @classmethod
    async def open(cls, port: int) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, "127.0.0.1", port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (uvloop's is not asyncio's class)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        match = _CONTENT_LENGTH.search(self.buf, 0, end + 2)
        length = int(match.group(1)) if match else 0
        if len(self.buf) < end + 4 + length:
            return
        status = int(self.buf[9:12])
        del self.buf[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"publisher connection lost: {exc}"))
        self.transport = None

    async def post(self, request: bytes) -> int:
        if self.transport is None:
            raise ConnectionError("publisher connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Requests:
    """The publish requests, one service token per tenant, the send time stamped into the data."""

    def __init__(self, tenants: list[str], pad: int) -> None:
        settings = Settings(jwt_secret=SECRET)
        self.heads = {t: (f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Authorization: Bearer {mint_token(settings, user='bench', tenant=t, scope='publish', ttl=7200)}"
                          f"\r\nContent-Length: ").encode() for t in tenants}
        self.pad = "x" * pad

    def build(self, tenant: str, step: int) -> bytes:
        # `"t":<ns>,"s":<step>` first in data: what bench/loadgen.py's Recorder finds in each frame
        body = orjson.dumps({"tenant": tenant, "channel": f"tenant:{tenant}", "type": "bench.event",
                             "data": {"t": time.time_ns(), "s": step, "pad": self.pad}})
        return self.heads[tenant] + str(len(body)).encode() + b"\r\n\r\n" + body


# --------------------------------------------------------------------------------------------
# one configuration, measured once


def tenant_names(count: int) -> list[str]:
    return [f"org_{n}" for n in range(count)]


def spread(config: Config, prefix: str, tenants: list[str], acked: Counter[str],
           port_of_slot: Any | None) -> dict[str, Any]:
    """Tenants and publishes per partition, and (on the cluster) partitions and publishes per
    primary: where each partition's hash tag `{pN/C}` hashes to."""
    partitions = config.partitions
    keys = Keys(prefix, partitions=partitions, tagged=partitions > 1 or config.engine == "cluster")
    per_partition_tenants = Counter(partition_of(t, partitions) for t in tenants)
    per_partition_publishes: Counter[int] = Counter()
    for tenant, n in acked.items():
        per_partition_publishes[partition_of(tenant, partitions)] += n
    out: dict[str, Any] = {
        "tenants_per_partition": [per_partition_tenants.get(p, 0) for p in range(partitions)],
        "publishes_per_partition": [per_partition_publishes.get(p, 0) for p in range(partitions)],
    }
    if port_of_slot is not None:
        slots = [key_slot(keys.log_of(p).encode()) for p in range(partitions)]
        owners = [int(port_of_slot(slot)) for slot in slots]
        per_primary: dict[int, dict[str, Any]] = {}
        for p, owner in enumerate(owners):
            row = per_primary.setdefault(owner, {"partitions": [], "tenants": 0, "publishes": 0})
            row["partitions"].append(p)
            row["tenants"] += per_partition_tenants.get(p, 0)
            row["publishes"] += per_partition_publishes.get(p, 0)
        out["slots"] = slots
        out["per_primary"] = {str(port): row for port, row in sorted(per_primary.items())}
    return out


async def measure(config: Config, url: str, nodes: dict[int, Node], roles: dict[int, str], args: argparse.Namespace,
                  port_of_slot: Any | None, data_dir: Path) -> dict[str, Any]:
    prefix = f"cc{os.getpid()}"
    tenants = tenant_names(args.tenants)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({"DATA_DIR": str(data_dir), "JWT_SECRET": SECRET, "REDIS_URL": url, "REDIS_PREFIX": prefix,
                "REDIS_PARTITIONS": str(config.partitions), "REDIS_WAIT_REPLICAS": str(config.wait),
                "PUBLISH_PER_SECOND": "0", "DRAIN_SECONDS": "1"})
    servers = [LiveServer(env, free_port()) for _ in range(2)]
    rec = Recorder()
    clients: list[WSClient] = []
    publishers: list[tuple[HttpConnection, int]] = []
    try:
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
        for server in servers:  # the tails started, the engine answering
            deadline = time.monotonic() + 20
            while sync_get(f"{server.url}/readyz") != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{config.name}: {server.url} not ready:\n{server.logs()[-2000:]}")
                await asyncio.sleep(0.1)
        settings = Settings(jwt_secret=SECRET)
        receiver = servers[1]
        for tenant in tenants:  # one WebSocket per tenant on the second process: tenant:<t> is subscribed by itself
            token = mint_token(settings, user="watcher", tenant=tenant, ttl=7200)
            client = WSClient(rec, f"127.0.0.1:{receiver.port}", "/v1/ws", {"Authorization": f"Bearer {token}"})
            await asyncio.wait_for(client.connect("127.0.0.1", receiver.port), 10)
            await asyncio.wait_for(client.ready, 10)
            clients.append(client)
        await asyncio.sleep(0.3)  # both `subscribed` frames of every socket handled
        requests = Requests(tenants, args.pad)
        for i in range(args.publishers):
            port = servers[i % 2].port
            publishers.append((await HttpConnection.open(port), port))

        # warm-up: every tenant once, from the first process to the second (scripts loaded, pools made)
        for tenant in tenants:
            status = await publishers[0][0].post(requests.build(tenant, WARM))
            if status != 202:
                raise RuntimeError(f"{config.name}: the warm-up publish answered {status}")
        await until(lambda: rec.count.get(WARM, 0) >= len(tenants), 10)
        if rec.count.get(WARM, 0) < len(tenants):
            raise RuntimeError(f"{config.name}: the warm-up reached {rec.count.get(WARM, 0)} of {len(tenants)} sockets")

        # 1. throughput: every publisher back to back
        server_pids = [s.process.pid for s in servers if s.process is not None]
        server_cpu, self_cpu, machine = procstat.CpuMeter(server_pids), procstat.CpuMeter([os.getpid()]), procstat.SystemCpu()
        redis_cpu = procstat.CpuMeter([n.process.pid for n in nodes.values() if n.process is not None])
        before = node_snapshot(nodes)
        acked: Counter[str] = Counter()
        errors: Counter[int] = Counter()
        turn = iter(range(1 << 62))
        stop_at = time.monotonic() + args.seconds
        started = time.monotonic()

        async def publish_loop(connection: HttpConnection) -> None:
            while time.monotonic() < stop_at:
                tenant = tenants[next(turn) % len(tenants)]
                status = await connection.post(requests.build(tenant, THROUGHPUT))
                if status == 202:
                    acked[tenant] += 1
                else:
                    errors[status] += 1

        await asyncio.gather(*(publish_loop(c) for c, _ in publishers))
        window = time.monotonic() - started
        after = node_snapshot(nodes)
        cpu = {"servers_pct": round(server_cpu.percent(), 1), "redis_pct": round(redis_cpu.percent(), 1),
               "generator_pct": round(self_cpu.percent(), 1)}
        cpu["rest_pct"] = round(max(machine.percent() - sum(cpu.values()), 0.0), 1)
        total = sum(acked.values())
        await until(lambda: rec.count.get(THROUGHPUT, 0) >= total, 15)
        throughput = {"seconds": round(window, 2), "publishers": len(publishers), "acknowledged": total,
                      "appends_per_s": round(total / window, 1), "errors": dict(errors),
                      "received": rec.count.get(THROUGHPUT, 0),
                      "saturated_latency": percentiles(rec.lat.pop(THROUGHPUT, array("q"))), "cpu": cpu,
                      "nodes": node_deltas(before, after, window, roles)}

        # 2. latency: paced, to the first process only, received on the second
        latency_pubs = [c for c, port in publishers if port == servers[0].port][: args.latency_connections]
        answers: list[float] = []
        latency_errors: Counter[int] = Counter()
        count = int(args.rate * args.latency_seconds)
        for meter in (server_cpu, redis_cpu, self_cpu, machine):
            meter.mark()
        t0 = time.monotonic() + 0.05

        async def paced(k: int, connection: HttpConnection) -> None:
            for j in range(k, count, len(latency_pubs)):
                delay = t0 + j / args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                begun = time.perf_counter()
                status = await connection.post(requests.build(tenants[j % len(tenants)], LATENCY))
                answers.append(time.perf_counter() - begun)
                if status != 202:
                    latency_errors[status] += 1

        await asyncio.gather(*(paced(k, c) for k, c in enumerate(latency_pubs)))
        sent_for = time.monotonic() - t0
        paced_cpu = {"servers_pct": round(server_cpu.percent(), 1), "redis_pct": round(redis_cpu.percent(), 1),
                     "generator_pct": round(self_cpu.percent(), 1)}
        paced_cpu["rest_pct"] = round(max(machine.percent() - sum(paced_cpu.values()), 0.0), 1)
        expected = count - sum(latency_errors.values())
        await until(lambda: rec.count.get(LATENCY, 0) >= expected, 10)
        latency = {"rate": args.rate, "published": count, "seconds": round(sent_for, 2), "errors": dict(latency_errors),
                   "received": rec.count.get(LATENCY, 0), **percentiles(rec.lat.pop(LATENCY, array("q"))),
                   "answer_p50_ms": round(quantile(answers, 0.50) * 1000, 3),
                   "answer_p99_ms": round(quantile(answers, 0.99) * 1000, 3), "cpu": paced_cpu,
                   # both processes' CPU for one event at this rate: its publish on one, its tail and fan-out on both
                   "server_cpu_ms_per_event": round(paced_cpu["servers_pct"] * 10 / (count / sent_for), 3)}
        return {"config": config.name, "engine": config.engine, "partitions": config.partitions, "wait": config.wait,
                "at": time.strftime("%H:%M:%S", time.gmtime()), "throughput": throughput, "latency": latency,
                "spread": spread(config, prefix, tenants, acked, port_of_slot),
                "disconnects": rec.disconnects, "receive_errors": rec.errors[:5]}
    finally:
        for client in clients:
            client.close()
        for connection, _ in publishers:
            connection.close()
        for server in servers:
            server.stop()


def sync_get(url: str) -> int:
    import httpx

    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code
    except httpx.HTTPError:
        return 0


async def until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def refused(config: Config, url: str) -> str | None:
    """Why the settings refuse this configuration (WAIT on a cluster URL, until supported), or None."""
    try:
        Settings(jwt_secret=SECRET, redis_url=url, redis_partitions=config.partitions,
                 redis_wait_replicas=config.wait)
    except ValueError as exc:
        return str(exc).splitlines()[-1] if "\n" in str(exc) else str(exc)
    return None


# --------------------------------------------------------------------------------------------
# the report


def summary(runs: list[dict[str, Any]], skipped: dict[str, str]) -> str:
    """A Markdown table: each configuration's figures per round (a / b / ...)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by.setdefault(run["config"], []).append(run)

    def each(rows: list[dict[str, Any]], pick: Any, fmt: str = "{:,.0f}") -> str:
        values = []
        for row in rows:
            value = pick(row)
            values.append("–" if value is None else fmt.format(value))
        return " / ".join(values)

    lines = ["| configuration | appends/s (N publishers) | publish→receive p50 / p99 ms | POST answer p50 / p99 ms |"
             " CPU servers / Redis / generator % | Redis commands per append | XREADs per append |"
             f" server CPU ms per event at {rows_rate(runs)}/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rows in by.items():
        def per_append(row: dict[str, Any]) -> float:
            return sum(n["commands"] for n in row["throughput"]["nodes"]) / max(row["throughput"]["acknowledged"], 1)

        def xreads(row: dict[str, Any]) -> float:
            return sum(n["xread"] for n in row["throughput"]["nodes"]) / max(row["throughput"]["acknowledged"], 1)

        def at(*path: str) -> Any:
            def pick(row: dict[str, Any]) -> Any:
                value: Any = row
                for key in path:
                    value = value[key]
                return value
            return pick

        ms = "{:.1f}"
        lines.append(" | ".join([
            f"| {name}", f"{each(rows, at('throughput', 'appends_per_s'))} ({rows[0]['throughput']['publishers']})",
            f"{each(rows, at('latency', 'p50_ms'), ms)} ; {each(rows, at('latency', 'p99_ms'), ms)}",
            f"{each(rows, at('latency', 'answer_p50_ms'), ms)} ; {each(rows, at('latency', 'answer_p99_ms'), ms)}",
            " ; ".join(each(rows, at("throughput", "cpu", group)) for group in ("servers_pct", "redis_pct", "generator_pct")),
            f"{each(rows, per_append, ms)}", f"{each(rows, xreads, '{:.2f}')}",
            f"{each(rows, at('latency', 'server_cpu_ms_per_event'), '{:.2f}')} |"]))
    for name, why in skipped.items():
        lines.append(f"| {name} | skipped: {why} | | | | | | |")
    out = ["\n".join(lines), ""]
    for name, rows in by.items():  # operations per node, and the spread (the last round's: the map does not move)
        out.append(f"**{name}**, per node during the throughput phase, round by round (commands as Redis counts them: "
                   "those a script runs and those a replica applies included):")
        ports = [n["port"] for n in rows[0]["throughput"]["nodes"]]
        for port in ports:
            cells = []
            for row in rows:
                node = next(n for n in row["throughput"]["nodes"] if n["port"] == port)
                seconds = row["throughput"]["seconds"]
                getkeys = node["getkeys"]
                cells.append(f"{node['commands_per_s']:,.0f} cmd/s, {node['evalsha'] / seconds:,.0f} appends/s, "
                             + (f"{getkeys / seconds:,.0f} COMMAND GETKEYS/s, " if getkeys else "")
                             + f"{node['cpu_pct']:.0f}% CPU")
            role = rows[0]["throughput"]["nodes"][ports.index(port)]["role"]
            out.append(f"- {role} :{port}: " + " / ".join(cells))
        last = rows[-1]["spread"]
        out.append(f"- tenants per partition: {last['tenants_per_partition']}")
        if "per_primary" in last:
            for port, row in last["per_primary"].items():
                share = [r["spread"]["per_primary"][port]["publishes"] / max(r["throughput"]["acknowledged"], 1) for r in rows]
                out.append(f"- primary :{port}: partitions {row['partitions']} ({len(row['partitions'])}), "
                           f"{row['tenants']} tenants, publishes " + " / ".join(f"{s:.0%}" for s in share))
        out.append("")
    return "\n".join(out)


def rows_rate(runs: list[dict[str, Any]]) -> str:
    rates = {run["latency"]["rate"] for run in runs}
    return f"{rates.pop():g}" if len(rates) == 1 else "the paced rate"


# --------------------------------------------------------------------------------------------


def commit() -> str:
    """HEAD, and the files of app/ changed in the working tree (the servers run the working tree)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip()
        changed = subprocess.run(["git", "status", "--short", "--", "app"], cwd=ROOT, capture_output=True, text=True,
                                 timeout=5).stdout.split("\n")
        dirty = [line[3:] for line in changed if line.strip()]
        return head + (f" + uncommitted {', '.join(dirty)}" if dirty else "")
    return "unknown"


async def run(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    configs = [CONFIGS[name] for name in args.configs.split(",") if name]
    one = OneRedis(base / "one") if any(c.engine == "redis" for c in configs) else None
    cluster = ClusterSet(base / "cluster") if any(c.engine == "cluster" for c in configs) else None
    runs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    try:
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in (one, cluster) if s is not None))
        if cluster is not None:
            primaries = set(cluster.primaries())
            cluster_roles = {p: "primary" if p in primaries else "replica" for p in cluster.nodes}
        for round_ in range(args.rounds):
            for config in configs:
                if config.name in skipped:
                    continue
                if config.engine == "cluster":
                    assert cluster is not None
                    url, nodes, roles, port_of_slot = cluster.url(), cluster.nodes, cluster_roles, cluster.port_of_slot
                    flush = sorted(primaries)
                else:
                    assert one is not None
                    url, nodes, roles, port_of_slot, flush = one.url(), one.nodes, one.roles(), None, [one.primary]
                why = refused(config, url)
                if why is not None:
                    skipped[config.name] = why
                    print(f"{config.name}: skipped: {why}", file=sys.stderr, flush=True)
                    continue
                data_dir = Path(tempfile.mkdtemp(prefix=f"cluster-cost-{config.name}-", dir=base))
                result = await measure(config, url, nodes, roles, args, port_of_slot, data_dir)
                result["round"] = round_ + 1
                flushall(nodes, flush)
                runs.append(result)
                t, lat = result["throughput"], result["latency"]
                print(f"[{result['at']}] round {round_ + 1} {config.name}: {t['appends_per_s']:,.0f} appends/s "
                      f"({t['acknowledged']} acknowledged, {t['received']} received, errors {t['errors']}); "
                      f"publish→receive p50 {lat['p50_ms']} p99 {lat['p99_ms']} ms "
                      f"({lat['received']}/{lat['published']}); CPU {t['cpu']}", file=sys.stderr, flush=True)
            if round_ + 1 < args.rounds and args.pause:
                await asyncio.sleep(args.pause)
    finally:
        if one is not None:
            one.stop()
        if cluster is not None:
            cluster.stop()
    return {"started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "commit": commit(),
            "machine": procstat.machine(), "args": {k: v for k, v in vars(args).items() if k != "out"},
            "note": "Redis nodes, both server processes and this generator share the machine's cores",
            "skipped": skipped, "runs": runs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Take the machine lock: flock -x /tmp/machine.lock python -m bench.cluster_cost")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated, run in this order each round "
                                                                   f"(default and all: {DEFAULT_CONFIGS})")
    parser.add_argument("--rounds", type=int, default=2, help="times every configuration runs, interleaved")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between rounds")
    parser.add_argument("--tenants", type=int, default=96, help="tenants published to in turn (one WebSocket each)")
    parser.add_argument("--publishers", type=int, default=32, help="HTTP connections publishing back to back, half per process")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the throughput phase")
    parser.add_argument("--rate", type=float, default=300.0, help="publishes/s in the latency phase")
    parser.add_argument("--latency-seconds", type=float, default=6.0)
    parser.add_argument("--latency-connections", type=int, default=8, help="HTTP connections the paced publishes share")
    parser.add_argument("--pad", type=int, default=200, help="bytes of padding in each event's data")
    parser.add_argument("--smoke", action="store_true", help="every configuration once at tiny size (checks the harness)")
    parser.add_argument("--out", type=Path, help="write results.json and summary.md here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.tenants, args.publishers, args.seconds = 1, 6, 4, 1.0
        args.rate, args.latency_seconds, args.latency_connections = 100.0, 1.0, 2
    args.latency_connections = max(1, min(args.latency_connections, (args.publishers + 1) // 2))
    procstat.raise_nofile(10_000)
    base = Path(tempfile.mkdtemp(prefix="cluster-cost-"))
    try:
        import uvloop

        result = uvloop.run(run(args, base))
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    text = summary(result["runs"], result["skipped"])
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "summary.md").write_text(f"Run {result['started']} – {result['finished']}, commit {result['commit']}, "
                                             f"{result['machine']}; {result['note']}.\n\n{text}\n")


if __name__ == "__main__":
    main()
