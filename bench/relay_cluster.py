"""A private Relay for the load and chaos runs: a redis-server, ``relay serve jobs`` and ``relay serve
controller`` as separate processes, and an api key file with one key per workspace.

The chaos run needs to hurt each part on purpose, so every process can be killed, paused and restarted
here; a restarted Redis keeps its port, its directory and its AOF file.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis as sync_redis

from bench.server_proc import ServerProcess, relay_serve_argv, wait_serving
from harness.ports import free_port
from harness.redis_cluster import RedisCluster, start_redis_cluster
from harness.redis_server import RedisServer, start_redis_server

JOB_SERVICE = "relay.v1.JobService"
CONTROLLER_SERVICE = "relay.v1.MigrationController"
#: Redis with every acknowledged write on disk before the reply: a killed Redis loses none of them.
AOF_ARGS = ["--appendonly", "yes", "--appendfsync", "always", "--enable-debug-command", "local"]
PLAIN_ARGS = ["--enable-debug-command", "local"]


@dataclass(frozen=True)
class KeyBook:
    """Raw api keys: one per workspace (execute and preview), one worker key, one admin key."""

    workspaces: dict[str, str]
    worker: str
    admin: str

    @classmethod
    def make(cls, workspace_count: int) -> KeyBook:
        names = [f"load-{n:03d}" for n in range(workspace_count)]
        return cls(
            {ws: f"lk_{ws}_{secrets.token_hex(12)}" for ws in names},
            secrets.token_hex(16),
            secrets.token_hex(16),
        )

    def file_entries(self) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = [
            {"key": key, "workspace_id": ws, "scopes": ["actions:execute", "actions:preview"]}
            for ws, key in self.workspaces.items()
        ]
        entries.append({"key": self.worker, "scopes": ["jobs:work"]})
        entries.append({"key": self.admin, "scopes": ["migration:admin"]})
        return entries

    def to_json(self) -> dict[str, object]:
        return {"workspaces": self.workspaces, "worker": self.worker, "admin": self.admin}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> KeyBook:
        return cls(dict(data["workspaces"]), str(data["worker"]), str(data["admin"]))  # type: ignore[arg-type]


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@dataclass
class Cluster:
    workdir: Path
    keys: KeyBook
    redis: RedisServer
    jobs_target: str
    controller_target: str
    env: dict[str, str]
    jobs: ServerProcess | None = None
    controller: ServerProcess | None = None
    controller_starts: int = 0
    #: Topology 2: the new layout on this Redis Cluster, the legacy layout on ``redis``.
    redis_cluster: RedisCluster | None = None

    # --- life cycle ------------------------------------------------------------------------------
    @classmethod
    def create(cls, workdir: Path, workspace_count: int, aof: bool, topology: str = "single") -> Cluster:
        """``topology`` "single": both layouts on one redis-server; "cluster": the legacy layout on it and
        the new layout on a private Redis Cluster (3 primaries with a replica each)."""
        workdir.mkdir(parents=True, exist_ok=True)
        extra = AOF_ARGS if aof else PLAIN_ARGS
        redis = start_redis_server(extra, prefix="relay-bench-redis-")
        redis_cluster = start_redis_cluster(primaries=3, replicas=1) if topology == "cluster" else None
        keys = KeyBook.make(workspace_count)
        key_file = workdir / "keys.json"
        key_file.write_text(json.dumps(keys.file_entries()))
        env = {
            "REDIS_URL": redis.url,
            "RELAY_API_KEYS_FILE": str(key_file),
            "RELAY_METRICS_LISTEN": "",
            "RELAY_LOG_LEVEL": "WARNING",
            "RELAY_CREDENTIALS": str(workdir / "credentials.json"),
            # The default stage before the walk sets one in Redis: the old system's legacy-only phase.
            "AI_JOBS_NEW_SCHEMA": "off",
        }
        if redis_cluster is not None:
            env |= {"REDIS_URL": redis_cluster.url, "RELAY_LEGACY_REDIS_URL": redis.url}
        cluster = cls(
            workdir,
            keys,
            redis,
            f"127.0.0.1:{free_port()}",
            f"127.0.0.1:{free_port()}",
            env,
            redis_cluster=redis_cluster,
        )
        return cluster

    def start(self) -> None:
        self.jobs = self._spawn("jobs", self.jobs_target, JOB_SERVICE)
        self.start_controller()

    def stop(self) -> None:
        for proc in (self.controller, self.jobs):
            if proc is not None:
                proc.stop()
        self.resume_redis()
        self.redis.stop()
        if self.redis_cluster is not None:
            self.redis_cluster.stop()

    def _spawn(self, role: str, target: str, service: str) -> ServerProcess:
        log_path = self.workdir / f"relay-{role}.log"
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                relay_serve_argv(role),
                env={**os.environ, **self.env, "RELAY_LISTEN": target},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        srv = ServerProcess(role, target, process, log_path)
        try:
            wait_serving(srv, service)
        except BaseException:
            srv.stop()
            raise
        return srv

    # --- the controller --------------------------------------------------------------------------
    def start_controller(self) -> None:
        self.controller = self._spawn("controller", self.controller_target, CONTROLLER_SERVICE)
        self.controller_starts += 1

    def kill_controller(self) -> None:
        """SIGKILL: no shutdown hook runs, the lease is left to expire."""
        if self.controller is not None and self.controller.process.poll() is None:
            self.controller.process.send_signal(signal.SIGKILL)
            self.controller.process.wait()

    # --- Redis -----------------------------------------------------------------------------------
    def redis_client(self) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.redis.port, socket_timeout=5)

    def pause_redis(self) -> None:
        os.kill(self.redis.process.pid, signal.SIGSTOP)

    def resume_redis(self) -> None:
        if self.redis.process.poll() is None:
            os.kill(self.redis.process.pid, signal.SIGCONT)

    def kill_client_connections(self) -> int:
        """CLIENT KILL TYPE normal: every ordinary connection, ours included, is cut."""
        with self.redis_client() as client:
            return int(client.execute_command("CLIENT", "KILL", "TYPE", "normal") or 0)

    def debug_sleep(self, seconds: float) -> None:
        with sync_redis.Redis(port=self.redis.port, socket_timeout=seconds + 5) as client:
            client.execute_command("DEBUG", "SLEEP", str(seconds))

    def crash_redis(self) -> None:
        """SIGKILL the redis-server (no final fsync, no shutdown save)."""
        self.resume_redis()
        self.redis.process.send_signal(signal.SIGKILL)
        self.redis.process.wait()

    def start_redis_again(self, timeout: float = 30.0) -> float:
        """The same redis-server command line (port, directory, AOF); returns seconds until it answers."""
        return self.redis.start_again(timeout)

    # --- the Redis Cluster of topology 2 ----------------------------------------------------------
    def kill_primary(self, workspace_id: str) -> dict[str, float]:
        """SIGKILL the primary serving the workspace's slot, wait until its replica took over, then start
        the dead node again (it rejoins as a replica)."""
        from relay.core.keys import KEYS

        assert self.redis_cluster is not None
        victim = self.redis_cluster.primary_of_key(KEYS.new_job(workspace_id, "x"))
        began = time.monotonic()
        self.redis_cluster.kill(victim)
        self.redis_cluster.wait_healthy()
        promoted = time.monotonic() - began
        self.redis_cluster.restart(victim)
        self.redis_cluster.wait_replicated()
        return {"promoted_seconds": round(promoted, 3), "port": victim.port}
