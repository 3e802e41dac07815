"""Relay against a Redis that speaks TLS only, as an ACL user allowed only the commands Relay needs.

The redis-server here listens with ``--tls-port`` (no plaintext port) and requires client certificates;
its ``default`` user is off. Relay's user ``relay`` may touch only ``ai:*`` keys and channels and may not
run INFO (nor anything @dangerous or @admin), so the restart detection of the sweeps is off, and the log
says so once.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from harness.ports import free_port
from relay import server
from relay.core import redis_client
from relay.core.config import Settings
from relay.core.redis_client import RedisTLS
from relay.v1 import backfill_pb2 as bpb
from relay.v1 import job_service_pb2 as pb
from relay.v1 import job_service_pb2_grpc, migration_controller_pb2_grpc
from relay.v1 import stage_pb2 as spb
from tests.backfill_support import events_of, seed_clean
from tests.certs import Pair, make_ca
from tests.conftest import Keys

#: What Relay needs, and no more: reads, writes and scripts on its keys, pub/sub on its channels, the
#: connection handshake, MULTI/EXEC, TIME and DBSIZE. No INFO, no KEYS/FLUSH*/CONFIG/DEBUG (@dangerous).
RELAY_ACL = (
    "resetkeys ~ai:* resetchannels &ai:* -@all +@read +@write +@scripting +@pubsub +@connection"
    " +@transaction +time +dbsize -@dangerous -@admin -info"
)


@dataclass
class TlsRedis:
    port: int
    ca: Path
    client: Pair
    admin_password: str
    relay_password: str
    process: subprocess.Popen[bytes]
    workdir: str

    def url(self, user: str, password: str, scheme: str = "rediss") -> str:
        return f"{scheme}://{user}:{password}@127.0.0.1:{self.port}/0"

    @property
    def tls(self) -> RedisTLS:
        return RedisTLS(str(self.ca), str(self.client.cert), str(self.client.key))

    def admin(self) -> Redis:
        return redis_client.connect(self.url("admin", self.admin_password), self.tls)


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    workdir = tempfile.mkdtemp(prefix="relay-redis-tls-")
    pki = Path(workdir) / "pki"
    ca = make_ca(pki, "redis-test-ca")
    server_pair = ca.issue(pki, "redis")
    client = ca.issue(pki, "relay-client", server=False, client=True)
    admin_pw, relay_pw = os.urandom(12).hex(), os.urandom(12).hex()
    port = free_port()
    config = Path(workdir) / "redis.conf"
    config.write_text(
        "\n".join(
            [
                "port 0",
                f"tls-port {port}",
                "bind 127.0.0.1",
                f"tls-cert-file {server_pair.cert}",
                f"tls-key-file {server_pair.key}",
                f"tls-ca-cert-file {ca.path}",
                "tls-auth-clients yes",
                'save ""',
                "appendonly no",
                f"dir {workdir}",
                "user default off",
                f"user admin on >{admin_pw} ~* &* +@all",
                f"user relay on >{relay_pw} {RELAY_ACL}",
            ]
        )
        + "\n"
    )
    process = subprocess.Popen([binary, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    srv = TlsRedis(port, ca.path, client, admin_pw, relay_pw, process, workdir)
    probe = sync_redis.Redis.from_url(srv.url("admin", admin_pw), **srv.tls.options())
    for _ in range(200):
        try:
            probe.ping()
            break
        except sync_redis.ConnectionError:
            time.sleep(0.025)
    else:
        process.kill()
        pytest.fail("the TLS redis-server did not start")
    probe.close()
    yield srv
    process.terminate()
    process.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


async def test_the_acl_is_what_it_says_and_tls_is_the_only_way_in(tls_redis: TlsRedis):
    relay_user = redis_client.connect(tls_redis.url("relay", tls_redis.relay_password), tls_redis.tls)
    try:
        assert await relay_user.set("ai:relay:probe", "1")
        with pytest.raises(sync_redis.exceptions.NoPermissionError):
            await relay_user.set("not-relays", "1")
        with pytest.raises(sync_redis.exceptions.NoPermissionError):
            await relay_user.info("server")
        with pytest.raises(sync_redis.exceptions.NoPermissionError):
            await relay_user.flushdb()
        assert await redis_client.probe_restart_detection(relay_user) is False
    finally:
        await relay_user.aclose()
    wrong_password = redis_client.connect(tls_redis.url("relay", "wrong"), tls_redis.tls)
    with pytest.raises(sync_redis.exceptions.AuthenticationError):
        await wrong_password.ping()
    await wrong_password.aclose()
    plaintext = redis_client.connect(tls_redis.url("relay", tls_redis.relay_password, scheme="redis"))
    with pytest.raises(sync_redis.exceptions.ConnectionError):
        await plaintext.ping()
    await plaintext.aclose()
    no_client_cert = redis_client.connect(
        tls_redis.url("relay", tls_redis.relay_password), RedisTLS(ca_file=str(tls_redis.ca))
    )
    with pytest.raises(sync_redis.exceptions.ConnectionError):
        await no_client_cert.ping()
    await no_client_cert.aclose()


async def test_relay_serves_jobs_stages_and_a_backfill_over_tls_as_a_limited_acl_user(
    tls_redis: TlsRedis, keys_file: tuple[Path, Keys], caplog: pytest.LogCaptureFixture
):
    keys = keys_file[1]
    admin = tls_redis.admin()
    await admin.flushdb()
    legacy_ids = await seed_clean(admin, 30)
    settings = Settings.from_env(
        {},
        listen="127.0.0.1:0",
        redis_url=tls_redis.url("relay", tls_redis.relay_password),
        redis_tls=tls_redis.tls,
        api_keys_file=str(keys_file[0]),
        metrics_listen="",
        stage_refresh_seconds=0.1,
    )
    caplog.set_level(logging.WARNING, logger="relay.redis")
    app = await server.start(settings, "all")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        controller = migration_controller_pb2_grpc.MigrationControllerStub(channel)
        md = keys.md("ws_a")
        reply = await jobs.Execute(
            pb.ExecuteRequest(actions=[pb.Action(provider="p", action="a", client_request_id="once")]),
            metadata=md,
        )
        again = await jobs.Execute(
            pb.ExecuteRequest(actions=[pb.Action(provider="p", action="a", client_request_id="once")]),
            metadata=md,
        )
        assert again.job_ids == reply.job_ids
        job_id = reply.job_ids[0]
        assert (await jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=md)).job.job_id == job_id
        claimed = await jobs.ClaimJob(pb.ClaimJobRequest(worker_id="w"), metadata=keys.md("worker"))
        assert claimed.job.job_id == job_id
        await jobs.UpdateJobStatus(
            pb.UpdateJobStatusRequest(workspace_id="ws-a", job_id=job_id, status=pb.JOB_STATUS_COMPLETED),
            metadata=keys.md("worker"),
        )
        # A stage change goes through the stage table and its pub/sub notice.
        await controller.SetStage(
            spb.SetStageRequest(workspace_id="ws-c", stage=spb.STAGE_DUAL_WRITE), metadata=keys.md("admin")
        )
        events = await events_of(
            controller.StartBackfill(bpb.StartBackfillRequest(batch_size=10), metadata=keys.md("admin"))
        )
        assert events[-1].kind == bpb.BACKFILL_EVENT_KIND_COMPLETED, events[-1]
        assert events[-1].backfill.progress.migrated == len(legacy_ids)
        listed = await jobs.ListJobs(pb.ListJobsRequest(page_size=100), metadata=md)
        assert job_id in {job.job_id for job in listed.jobs}
        assert len(listed.jobs) == 1 + sum(1 for n in range(len(legacy_ids)) if n % 3 == 0)
    finally:
        await channel.close()
        await app.stop(0.5)
        await admin.aclose()
    off = [r for r in caplog.records if "restart detection is off" in r.getMessage()]
    assert len(off) == 1, [r.getMessage() for r in caplog.records]
