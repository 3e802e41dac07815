"""A gRPC server in its own process (the real JobService or the no-op baseline), ready when healthy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

JOB_SERVICE = "relay.v1.JobService"


@dataclass
class ServerProcess:
    name: str
    target: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the server process so far, from /proc."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        # After the ")" that ends the command name, utime and stime are the 12th and 13th fields.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    name: str, argv: list[str], env: dict[str, str], target: str, log_dir: Path, cwd: Path | None = None
) -> ServerProcess:
    """Run ``argv`` with ``env`` added to this process's environment; wait until JobService is SERVING."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    srv = ServerProcess(name, target, process, log_path)
    try:
        wait_serving(srv)
    except BaseException:
        srv.stop()
        raise
    return srv


def wait_serving(srv: ServerProcess, service: str = JOB_SERVICE, timeout: float = 30.0) -> None:
    """Wait until ``srv`` reports ``service`` SERVING on the standard health service."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(srv.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if srv.process.poll() is not None:
                raise RuntimeError(f"{srv.name} exited at start-up: {srv.log_path.read_text()[-2000:]}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{srv.name} did not become healthy within {timeout:.0f} s")
            time.sleep(0.1)


def relay_serve_argv(role: str = "jobs") -> list[str]:
    """``relay serve <role>`` through the console script installed beside this interpreter."""
    script = Path(sys.executable).parent / "relay"
    if script.exists():
        return [str(script), "serve", role]
    return [
        sys.executable,
        "-c",
        "import sys; from relay.server import main; main(sys.argv[1:])",
        "serve",
        role,
    ]
