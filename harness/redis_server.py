"""A private redis-server on a free port, for one test session or one benchmark run.

Nothing is persisted unless the caller asks (``extra`` may turn the AOF on). The command line is kept, so
the server can be started again on the same port and directory after a crash or a SHUTDOWN: redis-server
rewrites its own /proc cmdline, so it could not be read back from there.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import redis as sync_redis

from harness.ports import free_port

#: Lets a test or a chaos run make Redis slow on purpose (DEBUG SLEEP), from this host only.
DEBUG_COMMAND = ["--enable-debug-command", "local"]


class RedisServerMissing(RuntimeError):
    """redis-server is not on PATH (Debian: apt-get install redis-server)."""


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes] | None  # None: a Redis someone else runs (only ``url`` is known)
    workdir: str
    argv: list[str] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self.url = self.url or f"redis://127.0.0.1:{self.port}/0"

    def client(self, socket_timeout: float | None = None) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.port, socket_timeout=socket_timeout)

    def cpu_seconds(self) -> float:
        """CPU time Redis has used so far (all its threads), from INFO."""
        info = self.client().info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def start_again(self, timeout: float = 30.0) -> float:
        """The same command line (port, directory, AOF) once more; returns seconds until it answers."""
        began = time.monotonic()
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_ready(self, timeout, "the private redis-server did not come back")
        return time.monotonic() - began

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis_server(extra: list[str] | None = None, prefix: str = "relay-redis-") -> RedisServer:
    """Start redis-server without persistence on a free port and wait until it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerMissing("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix=prefix)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", workdir, *(extra or [])]
    srv = RedisServer(port, None, workdir, argv)
    srv.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(srv, 10.0, "the private redis-server did not start")
    except BaseException:
        srv.stop()
        raise
    return srv


def _wait_ready(srv: RedisServer, timeout: float, failure: str) -> None:
    client = srv.client(socket_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except (sync_redis.ConnectionError, sync_redis.TimeoutError, sync_redis.BusyLoadingError):
                assert srv.process is not None
                if srv.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(failure) from None
                time.sleep(0.025)
    finally:
        client.close()
