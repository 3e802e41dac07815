"""A private redis-server on a free port, for one benchmark run (nothing shared with the test suite)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

import redis as sync_redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisProcess:
    port: int
    process: subprocess.Popen[bytes]
    workdir: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis(port=self.port)

    def cpu_seconds(self) -> float:
        """CPU time Redis has used so far (all its threads), from INFO."""
        info = self.client().info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis(extra: list[str] | None = None) -> RedisProcess:
    """Start redis-server without persistence on a free port and wait until it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="relay-bench-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", workdir, *(extra or [])]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    srv = RedisProcess(port, process, workdir)
    client = srv.client()
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return srv
        except sync_redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                srv.stop()
                raise RuntimeError("the private redis-server did not start") from None
            time.sleep(0.025)
