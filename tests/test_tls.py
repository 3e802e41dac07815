"""gRPC over TLS and mTLS, with real clients: served with the right certificates, refused without them.

The certificates are made here (tests/certs.py), never committed.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from harness.ports import free_port
from relay.clients.connection import Connection
from relay.core.tls import ClientTLS, ServerTLS, TLSConfigError
from relay.v1 import job_service_pb2 as pb
from relay.v1 import job_service_pb2_grpc
from tests.certs import Pair, make_ca
from tests.conftest import Keys, StartRelay


class PKI:
    def __init__(self, directory: Path):
        self.ca = make_ca(directory / "ca", "relay-test-ca")
        self.server: Pair = self.ca.issue(directory / "ca", "server")
        self.client: Pair = self.ca.issue(directory / "ca", "client", server=False, client=True)
        self.rogue_ca = make_ca(directory / "rogue", "rogue-ca")
        self.rogue_client: Pair = self.rogue_ca.issue(
            directory / "rogue", "client", server=False, client=True
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def _connection(target: str, keys: Keys, **tls: object) -> Connection:
    return Connection(target, keys.raw["ws_a"], ClientTLS(**tls))  # type: ignore[arg-type]


async def _execute(conn: Connection) -> grpc.StatusCode:
    try:
        async with conn.channel() as channel:
            await asyncio.wait_for(
                conn.jobs(channel).Execute(
                    pb.ExecuteRequest(actions=[pb.Action(provider="p", action="a")]),
                    metadata=conn.metadata,
                    timeout=5,
                ),
                10,
            )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_tls_serves_a_client_that_trusts_its_ca_and_has_no_plaintext_port(
    start_relay: StartRelay, keys: Keys, pki: PKI
):
    relay = await start_relay(tls=ServerTLS(str(pki.server.cert), str(pki.server.key)))
    target = relay.target
    ok = _connection(target, keys, enabled=True, ca_file=str(pki.ca.path))
    assert await _execute(ok) == grpc.StatusCode.OK
    by_name = _connection(
        f"localhost:{relay.app.port}", keys, enabled=True, ca_file=str(pki.ca.path), server_name="localhost"
    )
    assert await _execute(by_name) == grpc.StatusCode.OK
    # Plaintext to the same port: no handshake, no service.
    assert await _execute(Connection(target, keys.raw["ws_a"])) == grpc.StatusCode.UNAVAILABLE
    # A client that trusts another CA refuses the server.
    rogue = _connection(target, keys, enabled=True, ca_file=str(pki.rogue_ca.path))
    assert await _execute(rogue) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate_signed_by_the_client_ca(
    start_relay: StartRelay, keys: Keys, pki: PKI
):
    relay = await start_relay(
        tls=ServerTLS(str(pki.server.cert), str(pki.server.key), client_ca_file=str(pki.ca.path))
    )
    target, ca = relay.target, str(pki.ca.path)
    with_cert = _connection(
        target, keys, enabled=True, ca_file=ca, cert_file=str(pki.client.cert), key_file=str(pki.client.key)
    )
    assert await _execute(with_cert) == grpc.StatusCode.OK
    assert await _execute(_connection(target, keys, enabled=True, ca_file=ca)) == grpc.StatusCode.UNAVAILABLE
    rogue = _connection(
        target,
        keys,
        enabled=True,
        ca_file=ca,
        cert_file=str(pki.rogue_client.cert),
        key_file=str(pki.rogue_client.key),
    )
    assert await _execute(rogue) == grpc.StatusCode.UNAVAILABLE
    assert await _execute(Connection(target, keys.raw["ws_a"])) == grpc.StatusCode.UNAVAILABLE


async def test_a_half_configured_tls_is_refused_at_start(start_relay: StartRelay, pki: PKI):
    with pytest.raises(TLSConfigError, match="RELAY_TLS_KEY_FILE"):
        await start_relay(tls=ServerTLS(cert_file=str(pki.server.cert)))
    with pytest.raises(TLSConfigError, match="cannot read"):
        await start_relay(tls=ServerTLS(str(pki.server.cert), str(pki.server.cert) + ".missing"))


def _wait_for(path: Path, port: int, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0 and path.exists():
                return
        time.sleep(0.05)
    raise AssertionError("relay serve did not start")


def _relayctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from relay.clients.relayctl import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_relay_serve_flags_and_relayctl_with_tls_in_its_saved_credentials(tmp_path: Path, pki: PKI):
    port = free_port()
    creds = tmp_path / "credentials.json"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "OTEL_"))},
        "REDIS_URL": "",
        "RELAY_LISTEN": f"127.0.0.1:{port}",
        "RELAY_METRICS_LISTEN": "",
        "RELAY_CREDENTIALS": str(creds),
    }
    proc = subprocess.Popen(
        [
            *(sys.executable, "-c", "from relay.server import main; main()", "serve"),
            *("--tls-cert-file", str(pki.server.cert), "--tls-key-file", str(pki.server.key)),
            *("--tls-client-ca-file", str(pki.ca.path)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(creds, port, proc)
        time.sleep(0.2)  # the file is written in one call; let it finish
        saved = json.loads(creds.read_text())
        assert saved["tls"] is True
        # TLS but no client certificate: the server refuses (exit 5, unreachable).
        refused = _relayctl(
            env, "--tls-ca", str(pki.ca.path), "jobs", "execute", "--provider", "p", "--action", "a"
        )
        assert refused.returncode == 5, refused.stderr
        saved.update(tls_ca=str(pki.ca.path), tls_cert=str(pki.client.cert), tls_key=str(pki.client.key))
        creds.write_text(json.dumps(saved))
        done = _relayctl(
            env, "jobs", "execute", "--provider", "p", "--action", "a", "--client-request-id", "r1"
        )
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.split("job_id:")[1].split()[0]
        got = _relayctl(env, "jobs", "get", job_id)
        assert got.returncode == 0 and job_id in got.stdout, got.stderr
        plaintext = _relayctl(env, "--no-tls", "jobs", "get", job_id)
        assert plaintext.returncode == 5, plaintext.stderr
        missing = _relayctl(env, "--tls-ca", str(tmp_path / "nope.pem"), "jobs", "get", job_id)
        assert missing.returncode == 2 and "cannot read the CA file" in missing.stderr
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert b"mTLS" in err


def test_relay_serve_with_a_certificate_and_no_key_exits_with_a_usage_error(tmp_path: Path, pki: PKI):
    env = {
        **os.environ,
        "REDIS_URL": "",
        "RELAY_METRICS_LISTEN": "",
        "RELAY_LISTEN": f"127.0.0.1:{free_port()}",
    }
    env["RELAY_TLS_CERT_FILE"] = str(pki.server.cert)
    env.pop("RELAY_TLS_KEY_FILE", None)
    done = subprocess.run(
        [sys.executable, "-c", "from relay.server import main; main()", "serve"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and b"RELAY_TLS_KEY_FILE" in done.stderr


def test_a_plain_stub_on_a_secure_channel_works_too(pki: PKI):
    # The credentials are ordinary grpc credentials: any client of the contract can use them.
    creds = ClientTLS(enabled=True, ca_file=str(pki.ca.path)).credentials()
    channel = grpc.secure_channel("127.0.0.1:1", creds)
    assert job_service_pb2_grpc.JobServiceStub(channel) is not None
    channel.close()
