"""Where relayctl connects, with which key and TLS: flags, then environment, then the saved credentials.

The saved credentials (``~/.config/relay/credentials.json``, or ``RELAY_CREDENTIALS``) are a JSON
object: ``target``, ``api_key``, and for TLS ``tls`` (true: TLS with the system's roots), ``tls_ca``,
``tls_cert``, ``tls_key`` (paths) and ``tls_server_name``. Any ``tls_*`` file turns TLS on.

Every channel carries the gRPC service config in ``relay/service_config.json`` (deadlines, and retries of
UNAVAILABLE on the methods that are safe to repeat). Execute is retried only on a channel made with
``retry_execute=True``, which relayctl asks for when the call carries a ``client_request_id``: the
server then answers a repeat with the job it already made.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import grpc

from relay.core.config import Settings
from relay.core.tls import ClientTLS
from relay.v1 import job_service_pb2_grpc, migration_controller_pb2_grpc

EXECUTE = {"service": "relay.v1.JobService", "method": "Execute"}


@cache
def _packaged_service_config() -> str:
    return (resources.files("relay") / "service_config.json").read_text()


def service_config(retry_execute: bool = False) -> dict[str, Any]:
    """The service config relayctl uses; with ``retry_execute`` Execute gets the read methods' retries."""
    config: dict[str, Any] = json.loads(_packaged_service_config())
    if not retry_execute:
        return config
    config = copy.deepcopy(config)
    retried = next(entry for entry in config["methodConfig"] if "timeout" in entry and "retryPolicy" in entry)
    for entry in config["methodConfig"]:
        entry["name"] = [name for name in entry["name"] if name != EXECUTE]
    config["methodConfig"] = [entry for entry in config["methodConfig"] if entry["name"]]
    config["methodConfig"].append({**copy.deepcopy(retried), "name": [EXECUTE]})
    return config


def _saved_credentials() -> dict[str, Any]:
    path = Settings.from_env().credentials_path
    if not path.exists():
        return {}
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


@dataclass(frozen=True)
class Connection:
    target: str
    api_key: str
    tls: ClientTLS = field(default_factory=ClientTLS)

    @classmethod
    def resolve(
        cls,
        target: str | None,
        api_key: str | None,
        *,
        tls: bool | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_server_name: str | None = None,
    ) -> Connection:
        saved = _saved_credentials()

        def pick(given: str | None, env: str, key: str) -> str:
            return given or os.environ.get(env) or str(saved.get(key) or "")

        ca = pick(tls_ca, "RELAY_TLS_CA", "tls_ca")
        cert = pick(tls_cert, "RELAY_TLS_CERT", "tls_cert")
        key = pick(tls_key, "RELAY_TLS_KEY", "tls_key")
        enabled = tls if tls is not None else bool(saved.get("tls")) or bool(ca or cert or key)
        return cls(
            target=target or os.environ.get("RELAY_TARGET") or saved.get("target") or "127.0.0.1:50051",
            api_key=api_key or os.environ.get("RELAY_API_KEY") or saved.get("api_key", ""),
            tls=ClientTLS(
                enabled=enabled,
                ca_file=ca,
                cert_file=cert,
                key_file=key,
                server_name=pick(tls_server_name, "RELAY_TLS_SERVER_NAME", "tls_server_name"),
            ),
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def channel_options(self, retry_execute: bool = False) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.service_config", json.dumps(service_config(retry_execute))),
            ("grpc.enable_retries", 1),
        ]
        return options + (self.tls.channel_options() if self.tls.enabled else [])

    def channel(self, retry_execute: bool = False) -> grpc.aio.Channel:
        """A channel to the target (TLS when configured); ``retry_execute`` only for an Execute whose
        actions all carry a client_request_id."""
        options = self.channel_options(retry_execute)
        if self.tls.enabled:
            return grpc.aio.secure_channel(self.target, self.tls.credentials(), options=options)
        return grpc.aio.insecure_channel(self.target, options=options)

    def jobs(self, channel: grpc.aio.Channel) -> job_service_pb2_grpc.JobServiceStub:
        return job_service_pb2_grpc.JobServiceStub(channel)

    def controller(self, channel: grpc.aio.Channel) -> migration_controller_pb2_grpc.MigrationControllerStub:
        return migration_controller_pb2_grpc.MigrationControllerStub(channel)
