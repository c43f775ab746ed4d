"""Throwaway Redis servers the tests start themselves (so `.ci/run` has them too), in a directory
of their own on free ports, from Debian's redis-server: nothing of the machine's own Redis is
touched, and every process started is killed (by its pid) and every file removed afterwards.

`SentinelSet`: one primary, one replica (`replicaof`) and three Sentinels monitoring them with a
quorum of 2, `down-after-milliseconds` 1000 and `failover-timeout` 3000, so that a primary killed
is replaced within a few seconds. The data nodes keep nothing on disk (a node restarted comes back
empty) and sync diskless without delay (a replica is usable at once).

`ClusterSet`: six nodes made a Redis Cluster by `redis-cli --cluster create ... --cluster-replicas 1`
(three primaries, three replicas), `cluster-node-timeout` 1000, each with its bus on a free port.

Every wait here is for a condition, with a deadline that only turns a hang into a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis as sync_redis

from tests.conftest import free_port, skip_unless_ci

SERVICE = "forge"  # the name the Sentinels monitor the primary under
START_WAIT = 20.0  # seconds a server may take to answer, a set to settle, a failover to finish
FAILOVER_WAIT = 30.0


def redis_server() -> str:
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if binary is None:
        skip_unless_ci("redis-server is not installed (apt-get install redis-server); the Sentinel tests start their own")
    assert binary is not None
    return binary


def wait_for(check: Callable[[], Any], what: str, timeout: float = START_WAIT, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; errors count as not yet."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (sync_redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:g} s" + (f" (last error: {last!r})" if last else ""))


class Node:
    """One redis-server (a data node or a Sentinel) from a config file of its own."""

    def __init__(self, directory: Path, port: int, config: list[str], *, sentinel: bool = False) -> None:
        self.directory, self.port, self.sentinel = directory, port, sentinel
        kind = "sentinel" if sentinel else "redis"
        self.config_path = directory / f"{kind}-{port}.conf"
        self.log_path = directory / f"{kind}-{port}.log"
        self.config_path.write_text("\n".join([
            f"port {port}", "bind 127.0.0.1", "protected-mode no", f"dir {directory}", f"logfile {self.log_path}",
            *config]) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def client(self, **options: Any) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=1, **options)

    def start(self, *extra: str) -> Node:
        command = [redis_server(), str(self.config_path), *(("--sentinel",) if self.sentinel else ()), *extra]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        try:
            def answers() -> bool:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on {self.port} exited with {self.process.returncode}:\n{self.logs()}")
                return bool(client.ping())

            wait_for(answers, f"redis-server on {self.port} answering")
        finally:
            client.close()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save, connections cut as a crashed host cuts them."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def pause(self) -> None:
        if self.alive:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGCONT)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class SentinelSet:
    """One primary, one replica and three Sentinels; `url` is the service's REDIS_URL for it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.nodes: dict[int, Node] = {}
        self.sentinels: list[Node] = []

    # --- set-up and teardown ------------------------------------------------------------

    def _data_config(self, replica_of: int | None) -> list[str]:
        config = ['save ""', "appendonly no", "repl-diskless-sync yes", "repl-diskless-sync-delay 0"]
        if replica_of is not None:
            config.append(f"replicaof 127.0.0.1 {replica_of}")
        return config

    def start(self) -> SentinelSet:
        try:
            primary_port, replica_port = free_port(), free_port()
            primary = Node(self.directory, primary_port, self._data_config(None)).start()
            self.nodes[primary_port] = primary
            self.nodes[replica_port] = Node(self.directory, replica_port, self._data_config(primary_port)).start()
            self.wait_replicas(1, port=primary_port)
            for _ in range(3):
                port = free_port()
                self.sentinels.append(Node(self.directory, port, [
                    "sentinel resolve-hostnames no",
                    f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2",
                    f"sentinel down-after-milliseconds {SERVICE} 1000",
                    f"sentinel failover-timeout {SERVICE} 3000",
                    f"sentinel parallel-syncs {SERVICE} 1",
                ], sentinel=True).start())
            self.wait_settled()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every process this set started (by its pid) and remove its files."""
        for node in [*self.sentinels, *self.nodes.values()]:
            with contextlib.suppress(Exception):
                node.resume()  # a paused process takes SIGKILL too, but a stopped one holds its port oddly
                node.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the service and the tests use ---------------------------------------------

    def url(self, *, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}" + (f"/{db}" if db else "")

    def ask(self, *command: Any) -> list[Any]:
        """The answer of every Sentinel that answers."""
        answers = []
        for sentinel in self.sentinels:
            if not sentinel.alive:
                continue
            client = sentinel.client(decode_responses=True)
            try:
                answers.append(client.execute_command(*command))
            except sync_redis.RedisError:
                pass
            finally:
                client.close()
        return answers

    def agreed_primary(self) -> int | None:
        """The primary's port when every Sentinel that answers names the same (during a failover
        they may not, for a moment)."""
        ports = {int(answer[1]) for answer in self.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE) if answer}
        return ports.pop() if len(ports) == 1 else None

    def primary_port(self) -> int:
        port = wait_for(self.agreed_primary, "the Sentinels agreeing on the primary")
        return int(port)

    def primary(self) -> Node:
        return self.nodes[self.primary_port()]

    def replicas_online(self, port: int | None = None) -> int:
        """Replicas the primary (or the node on `port`) streams to, synced."""
        client = self.nodes[port or self.primary_port()].client(decode_responses=True)
        try:
            info = client.info("replication")
        finally:
            client.close()
        return sum(1 for key, value in info.items() if key.startswith("slave") and isinstance(value, dict)
                   and value.get("state") == "online")

    def wait_replicas(self, count: int, timeout: float = START_WAIT, *, port: int | None = None) -> None:
        wait_for(lambda: self.replicas_online(port) >= count, f"{count} replica(s) online", timeout)

    def wait_settled(self, timeout: float = START_WAIT) -> None:
        """Every Sentinel sees the primary up, its replicas and the two other Sentinels: a failover
        can then reach its quorum."""
        replicas = len(self.nodes) - 1

        def settled() -> bool:
            masters = self.ask("SENTINEL", "MASTER", SERVICE)  # redis-py parses each into a dict
            if len(masters) != len(self.sentinels):
                return False
            for state in masters:
                if state["flags"] != "master" or int(state["num-slaves"]) < replicas or int(state["num-other-sentinels"]) < 2:
                    return False
            # each replica known and up ("slave"; not "s_down", nor the old primary still "disconnected")
            return all(replica["flags"] == "slave" for answer in self.ask("SENTINEL", "REPLICAS", SERVICE)
                       for replica in answer)

        wait_for(settled, "the Sentinels agreeing on the primary, its replicas and each other", timeout, interval=0.2)

    def kill_primary(self) -> int:
        """SIGKILL the primary; returns its port."""
        port = self.primary_port()
        self.nodes[port].kill()
        return port

    def wait_failover(self, old_port: int, timeout: float = FAILOVER_WAIT) -> int:
        """Until the Sentinels name another primary and it says it is one; returns its port."""
        def promoted() -> int | None:
            port = self.agreed_primary()
            if port is None or port == old_port:
                return None
            client = self.nodes[port].client(decode_responses=True)
            try:
                return port if client.info("replication")["role"] == "master" else None
            finally:
                client.close()

        return int(wait_for(promoted, f"a failover away from {old_port}", timeout, interval=0.1))

    def restart_as_replica(self, port: int) -> None:
        """Bring a killed node back (empty) as a replica of the current primary, as an operator or
        an orchestrator would; the Sentinels already list it as one."""
        primary = self.primary_port()
        self.nodes[port].start("--replicaof", "127.0.0.1", str(primary))


def redis_cli() -> str:
    binary = shutil.which("redis-cli") or ("/usr/bin/redis-cli" if Path("/usr/bin/redis-cli").exists() else None)
    if binary is None:
        skip_unless_ci("redis-cli is not installed (apt-get install redis-tools); the Cluster tests create their own")
    assert binary is not None
    return binary


class ClusterSet:
    """A Redis Cluster of six nodes, three primaries and three replicas (`redis-cli --cluster
    create ... --cluster-replicas 1`), each on a free port with its bus on another free port
    (`cluster-port`: the default, port + 10000, may be taken or past 65535). `cluster-node-timeout`
    1000 ms, so a primary killed is replaced by its replica within a few seconds. Nothing on disk
    but each node's cluster config (a node restarted comes back empty, and as a replica)."""

    def __init__(self, directory: Path, *, nodes: int = 6, replicas: int = 1) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.count, self.replicas = nodes, replicas
        self.nodes: dict[int, Node] = {}

    def _config(self, port: int, bus: int) -> list[str]:
        return ['save ""', "appendonly no", "repl-diskless-sync yes", "repl-diskless-sync-delay 0",
                "cluster-enabled yes", f"cluster-config-file nodes-{port}.conf", f"cluster-port {bus}",
                "cluster-node-timeout 1000", "cluster-replica-validity-factor 0"]

    def start(self) -> ClusterSet:
        try:
            for _ in range(self.count):
                port, bus = free_port(), free_port()
                self.nodes[port] = Node(self.directory, port, self._config(port, bus)).start()
            created = subprocess.run(
                [redis_cli(), "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, text=True, timeout=60)
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
            self.wait_settled()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every node this set started (by its pid) and remove its files."""
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.resume()
                node.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ClusterSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self) -> str:
        """REDIS_URL for it: two of its nodes (redis-py finds the others from the slot map)."""
        ports = list(self.nodes)[:2]
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)

    def info(self, port: int, section: str) -> dict[str, Any]:
        client = self.nodes[port].client(decode_responses=True)
        try:
            if section == "cluster":
                text = client.execute_command("CLUSTER", "INFO")
                return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)
            return dict(client.info(section))
        finally:
            client.close()

    def primaries(self) -> list[int]:
        return [port for port, node in self.nodes.items()
                if node.alive and self.info(port, "replication").get("role") == "master"]

    def wait_settled(self, timeout: float = START_WAIT) -> None:
        """Every live node sees every slot served (`cluster_state:ok`) and every live replica is
        synced with its primary."""
        def settled() -> bool:
            for port, node in self.nodes.items():
                if not node.alive:
                    continue
                cluster = self.info(port, "cluster")
                if cluster.get("cluster_state") != "ok" or cluster.get("cluster_slots_ok") != "16384":
                    return False
                replication = self.info(port, "replication")
                if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                    return False
            return True

        wait_for(settled, "the cluster serving every slot with its replicas synced", timeout, interval=0.1)

    def port_of_slot(self, slot: int) -> int:
        """The port of the primary serving `slot`, as the nodes say."""
        for node in self.nodes.values():
            if not node.alive:
                continue
            client = node.client()
            try:
                for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        return int(primary[1])
            except sync_redis.RedisError:
                continue
            finally:
                client.close()
        raise AssertionError(f"no node serves slot {slot}")

    def replica_of(self, port: int) -> int:
        """The port of the (live) replica of the primary on `port`."""
        for other, node in self.nodes.items():
            if other != port and node.alive and int(self.info(other, "replication").get("master_port", 0) or 0) == port:
                return other
        raise AssertionError(f"no replica of {port}")

    def wait_failover(self, slot: int, old_port: int, timeout: float = FAILOVER_WAIT) -> int:
        """Until another node serves `slot` as a primary and every live node sees every slot
        served; returns its port."""
        def promoted() -> int | None:
            port = self.port_of_slot(slot)
            if port == old_port or self.info(port, "replication").get("role") != "master":
                return None
            self.wait_settled(timeout=1.0)
            return port

        return int(wait_for(promoted, f"a failover of slot {slot} away from {old_port}", timeout, interval=0.1))
