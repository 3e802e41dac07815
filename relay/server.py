"""``relay serve``: JobService and MigrationController over grpc.aio, alone or together.

With no REDIS_URL the store is an embedded in-memory Redis (fakeredis), for a first look only: it says
so in the log, and everything is lost at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio import Redis

from relay.core import event_loop, logs, redis_client
from relay.core.auth import ALL_SCOPES, KeyRing, load_key_file
from relay.core.config import Settings
from relay.core.limits import Limits, trim_freed_memory
from relay.core.malformed_requests import MalformedRequestInterceptor
from relay.core.page_token import PageTokenCodec
from relay.core.redis_observer import observe_pipelined, observe_redis
from relay.core.replication import ReplicaWait
from relay.core.rpc_observer import RpcObserver
from relay.core.stage_store import StageView
from relay.core.stores import Stores, TopologyError, open_stores
from relay.core.telemetry import Metrics, build_metrics, serve_metrics
from relay.core.tls import TLSConfigError
from relay.services.job_servicer import JobServicer
from relay.services.job_store import JobStore
from relay.v1 import job_service_pb2, job_service_pb2_grpc

log = logging.getLogger("relay.server")

ROLES = ("all", "jobs", "controller")
DEV_WORKSPACE = "dev"


async def connect(settings: Settings) -> Stores:
    """The stores (REDIS_URL, RELAY_LEGACY_REDIS_URL): see relay.core.stores; every client is made by
    relay.core.redis_client."""
    if settings.redis_url:
        return await open_stores(settings.redis_url, settings.legacy_redis_url, settings.redis_tls)
    if settings.legacy_redis_url:
        raise TopologyError("RELAY_LEGACY_REDIS_URL is set but REDIS_URL is not: name the new layout's store")
    return Stores.single(redis_client.connect("", settings.redis_tls))


@dataclass
class App:
    """A running server: its port, its parts, and how to stop it."""

    server: grpc.aio.Server
    port: int
    stores: Stores
    metrics: Metrics
    stages: StageView
    health: Any
    background: list[Any] = field(default_factory=list)
    job_store: JobStore | None = None

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for part in reversed(self.background):
            await part.stop()
        await self.stages.stop()
        await self.stores.aclose()

    @property
    def redis(self) -> Redis:
        """The store of the new layout and Relay's state."""
        return self.stores.new  # type: ignore[return-value]


def grpc_server(metrics: Metrics, limits: Limits | None = None) -> grpc.aio.Server:
    """The grpc.aio server every role runs on, with its interceptors (bench/'s no-op baseline uses it too).

    Its receive limit admits the largest valid request and no more, and it runs at most
    ``max_concurrent_rpcs`` calls at once (``relay.core.limits``)."""
    limits = limits or Limits.from_env()
    return grpc.aio.server(
        interceptors=[RpcObserver(metrics), MalformedRequestInterceptor()],
        options=[("grpc.max_receive_message_length", limits.receive_bytes)],
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )


async def start(
    settings: Settings,
    role: str = "all",
    redis: Redis | None = None,
    metrics: Metrics | None = None,
    stores: Stores | None = None,
) -> App:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    # TLS files are read first: a bad one stops the start before anything is connected.
    credentials = settings.tls.credentials() if settings.tls.enabled else None
    if stores is None:
        stores = Stores.single(redis) if redis is not None else await connect(settings)
    redis = stores.new
    metrics = metrics or build_metrics(settings.metric_workspaces, settings.metric_workspace_top_n)
    observe_redis(redis, metrics)
    if stores.pipelined is not None:
        observe_pipelined(stores.pipelined, metrics)
    if not stores.shared:
        observe_redis(stores.legacy, metrics)
    static = load_key_file(settings.api_keys_file) if settings.api_keys_file else {}
    keyring = KeyRing(redis, static, settings.api_key_cache_seconds)
    if not static and not await keyring.any_stored():
        await _make_dev_key(keyring, settings)
    stages = StageView(redis, settings.default_stage, settings.stage_refresh_seconds)
    await stages.start()
    metrics.watch_stages(stages)

    server = grpc_server(metrics)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [reflection.SERVICE_NAME, health.SERVICE_NAME]
    background: list[Any] = []
    store: JobStore | None = None
    if role in ("all", "jobs"):
        tokens = await PageTokenCodec.shared(redis)
        store = JobStore(
            stores,
            stages,
            tokens,
            metrics,
            settings.idempotency_ttl_seconds,
            replica_wait=ReplicaWait(settings.redis_wait_replicas, settings.redis_wait_timeout_ms),
        )
        job_service_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(store, keyring, settings), server)
        names.append(job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name)
    if role in ("all", "controller"):
        from relay.controller.assembly import add_controller

        await redis_client.probe_restart_detection(stores.legacy)
        names.append(await add_controller(server, stores, settings, metrics, keyring, stages, background))
    reflection.enable_server_reflection(names, server)
    # With TLS configured the one port is a TLS port: there is no plaintext listener beside it.
    if credentials is not None:
        port = server.add_secure_port(settings.listen, credentials)
    else:
        port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise OSError(f"cannot listen on {settings.listen}")
    await server.start()
    for name in names[1:]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return App(server, port, stores, metrics, stages, health_servicer, background, store)


async def _make_dev_key(keyring: KeyRing, settings: Settings) -> None:
    raw, _ = await keyring.create(DEV_WORKSPACE, list(ALL_SCOPES), "development key made by relay serve")
    path = settings.credentials_path
    path.parent.mkdir(parents=True, exist_ok=True)
    saved: dict[str, object] = {"target": settings.listen, "api_key": raw, "workspace_id": DEV_WORKSPACE}
    if settings.tls.enabled:
        saved["tls"] = True  # relayctl then speaks TLS (add tls_ca, tls_cert, tls_key as needed)
    path.write_text(json.dumps(saved) + "\n")
    os.chmod(path, 0o600)
    print(
        "No api keys are configured: made a development key for workspace "
        f"'{DEV_WORKSPACE}' with all scopes.\n"
        f"  api key: {raw}\n  saved to {path} (relayctl finds it there)"
        + (
            "\n  TLS is on: relayctl needs --tls-ca (or tls_ca in that file) unless the system trusts it"
            if settings.tls.enabled
            else ""
        ),
        file=sys.stderr,
        flush=True,
    )


async def _serve(settings: Settings, role: str) -> None:
    from relay.console.server import start_console  # before serving: its imports take a moment

    metrics = build_metrics(settings.metric_workspaces, settings.metric_workspace_top_n)
    serve_metrics(metrics, settings.metrics_listen)
    try:
        app = await start(settings, role, metrics=metrics)
    except BaseException:
        metrics.shutdown()
        raise
    trimming = asyncio.create_task(trim_freed_memory())  # RSS returns after floods (relay.core.limits)
    how = settings.tls.describe()
    log.info("relay %s listening (%s)", role, how, extra={"listen": f"{settings.listen} (port {app.port})"})
    print(f"relay {role} listening on {settings.listen} ({how})", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    console = await start_console(settings, app.port) if role in ("all", "controller") else None
    await stop.wait()
    log.info("draining in-flight calls", extra={"reason": "signal"})
    if console is not None:
        await console.stop()  # first: its event streams are calls to the controller
    await app.stop(settings.shutdown_grace_seconds)
    trimming.cancel()
    metrics.shutdown()  # a last OTLP push, when one is configured
    log.info("stopped")


#: ``relay serve``'s flags over the setting of the same name (``--redis-url`` sets ``redis_url``).
SETTING_FLAGS: dict[str, str] = {
    "listen": "host:port (env RELAY_LISTEN, default 127.0.0.1:50051)",
    "redis_url": "redis://... of the new layout's store, a single Redis or any node of a cluster "
    "(env REDIS_URL; empty: embedded in-memory store)",
    "legacy_redis_url": "redis://... of the single Redis holding the legacy layout "
    "(env RELAY_LEGACY_REDIS_URL; empty: the same store as --redis-url)",
    "metrics_listen": "host:port for /metrics (env RELAY_METRICS_LISTEN; '' is off)",
    "api_keys_file": "JSON list of keys (env RELAY_API_KEYS_FILE)",
}
#: The ``--tls-*`` flags over the field of the same name of ``Settings.tls``; an empty one keeps the env's.
TLS_FLAGS: dict[str, str] = {
    "cert_file": "PEM certificate chain: TLS only (env RELAY_TLS_CERT_FILE)",
    "key_file": "PEM private key of the certificate (env RELAY_TLS_KEY_FILE)",
    "client_ca_file": "PEM CA: require client certificates it signed, mTLS (env RELAY_TLS_CLIENT_CA_FILE)",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_serve(argv: list[str] | None = None) -> tuple[Settings, str]:
    """The settings (the environment, then the flags over it) and the role of a ``relay serve`` command."""
    parser = argparse.ArgumentParser(prog="relay", description="Relay job service and migration controller.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run JobService and/or MigrationController")
    serve.add_argument("role", nargs="?", default="all", choices=ROLES)
    for name, text in SETTING_FLAGS.items():
        serve.add_argument(_flag(name), dest=name, help=text)
    for name, text in TLS_FLAGS.items():
        serve.add_argument(_flag("tls_" + name), dest="tls_" + name, help=text)
    args = parser.parse_args(argv)
    settings = Settings.from_env(**{name: getattr(args, name) for name in SETTING_FLAGS})
    tls = {name: getattr(args, "tls_" + name) for name in TLS_FLAGS if getattr(args, "tls_" + name)}
    return dataclasses.replace(settings, tls=dataclasses.replace(settings.tls, **tls)), args.role


def main(argv: list[str] | None = None) -> None:
    settings, role = parse_serve(argv)
    logs.configure(settings.log_level, settings.log_format)
    try:
        settings.tls.check()
        with contextlib.suppress(KeyboardInterrupt):
            event_loop.run(_serve(settings, role))
    except (TLSConfigError, TopologyError) as exc:
        print(f"relay: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
