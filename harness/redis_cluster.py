"""A private Redis Cluster for tests and benchmarks: primaries with a replica each, on free ports.

Started with Debian's ``redis-server --cluster-enabled yes`` and joined by ``redis-cli --cluster create``;
nothing is kept on disk between runs. Nodes can be killed (SIGKILL) and slots moved, for failover and
resharding tests.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis as sync_redis

from harness.ports import port_is_free


def _free_ports(count: int) -> list[int]:
    """Ports whose cluster bus port (port + 10000) is free too, so below 55536 (the OS's own pick of a
    free port, ``harness.ports``, is often above it)."""
    rng = random.Random()
    while True:
        base = rng.randrange(20000, 45000)
        ports = list(range(base, base + count))
        if all(port_is_free(p) and port_is_free(p + 10000) for p in ports):
            return ports


@dataclass
class ClusterNode:
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    args: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.port, socket_timeout=5)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class RedisCluster:
    nodes: list[ClusterNode]
    workdir: Path
    node_timeout_ms: int
    stopped: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Any node's URL: Relay discovers the rest."""
        return f"redis://{self.nodes[0].address}/0"

    def live_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive]

    def node_of_port(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def primary_of_key(self, key: str) -> ClusterNode:
        """The live node that serves ``key``'s slot now."""
        for node in self.live_nodes():
            try:
                slot = node.client().cluster("KEYSLOT", key)
                for start, end, primary, *_ in node.client().cluster("SLOTS"):
                    if start <= slot <= end:
                        return self.node_of_port(int(primary[1]))
            except sync_redis.RedisError:
                continue
        raise RuntimeError(f"no live node serves {key!r}")

    def primaries(self) -> list[ClusterNode]:
        out = []
        for node in self.live_nodes():
            try:
                role = node.client().execute_command("ROLE")[0]
            except sync_redis.RedisError:
                continue
            if role in (b"master", "master"):
                out.append(node)
        return out

    def kill(self, node: ClusterNode) -> None:
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(5)

    def restart(self, node: ClusterNode) -> None:
        """Start a killed node again on its port and config: it rejoins, as a replica of whoever took its
        slots over."""
        node.process = subprocess.Popen(node.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_ping(node)

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Until every primary has a replica in sync."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(
                    int(p.client().info("replication").get("connected_slaves", 0)) > 0
                    for p in self.primaries()
                ):
                    return
            except sync_redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("a primary has no replica in sync")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node says the cluster is ok and every slot has a live primary."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (
                    all(
                        b"cluster_state:ok" in n.client().execute_command("CLUSTER", "INFO")
                        for n in self.live_nodes()
                    )
                    and self._slots_served_by_live_primaries()
                ):
                    return
            except sync_redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the cluster did not become healthy")

    def _slots_served_by_live_primaries(self) -> bool:
        live = {n.port for n in self.live_nodes()}
        slots = self.live_nodes()[0].client().cluster("SLOTS")
        covered = sum(end - start + 1 for start, end, primary, *_ in slots if int(primary[1]) in live)
        return covered == 16384

    def flush(self) -> None:
        for node in self.primaries():
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive:
                node.process.terminate()
        for node in self.nodes:
            try:
                node.process.wait(5)
            except subprocess.TimeoutExpired:
                node.process.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis_cluster(primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> RedisCluster:
    """A new cluster of ``primaries`` primaries with ``replicas`` replicas each, every slot covered."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise RuntimeError("redis-server and redis-cli are needed (Debian's redis-server package)")
    workdir = Path(tempfile.mkdtemp(prefix="relay-cluster-"))
    nodes = []
    for port in _free_ports(primaries * (1 + replicas)):
        d = workdir / str(port)
        d.mkdir()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
        args += ["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(node_timeout_ms)]
        args += ["--save", "", "--appendonly", "no", "--dir", str(d), "--enable-debug-command", "local"]
        # A replica that lost its primary takes over even when it has not heard from it for a while.
        args += ["--cluster-replica-validity-factor", "0"]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nodes.append(ClusterNode(port, process, d, args))
    cluster = RedisCluster(nodes, workdir, node_timeout_ms)
    try:
        for node in nodes:
            _wait_ping(node)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(n.address for n in nodes),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        cluster.wait_healthy()
        _wait_replicas_synced(cluster, primaries * replicas)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_ping(node: ClusterNode, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            node.client().ping()
            return
        except sync_redis.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError(f"redis-server on {node.port} did not start")


def _wait_replicas_synced(cluster: RedisCluster, expected: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        synced = 0
        for node in cluster.live_nodes():
            info = node.client().info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") == "up":
                synced += 1
        if synced >= expected:
            return
        time.sleep(0.1)
    raise RuntimeError("the cluster's replicas did not finish their first sync")


def reshard(cluster: RedisCluster, slot: int, target: ClusterNode) -> None:
    """Move one slot, with its keys, to ``target`` while clients keep using it (ASK redirects meanwhile)."""
    source = cluster.node_of_port(int(_owner(cluster, slot)))
    if source.port == target.port:
        return
    src, dst = source.client(), target.client()
    src_id, dst_id = src.cluster("MYID"), dst.cluster("MYID")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    while True:
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        if not keys:
            break
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    for node in cluster.primaries():
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


def _owner(cluster: RedisCluster, slot: int) -> int:
    for start, end, primary, *_ in cluster.live_nodes()[0].client().cluster("SLOTS"):
        if start <= slot <= end:
            return int(primary[1])
    raise RuntimeError(f"slot {slot} has no owner")
