"""Where relayctl connects and with which key: flags, then environment, then the saved credentials."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from relay.core.config import Settings
from relay.v1 import job_service_pb2_grpc, migration_controller_pb2_grpc


@dataclass(frozen=True)
class Connection:
    target: str
    api_key: str

    @classmethod
    def resolve(cls, target: str | None, api_key: str | None) -> Connection:
        saved: dict[str, str] = {}
        path = Settings.from_env().credentials_path
        if path.exists():
            try:
                saved = json.loads(Path(path).read_text())
            except (OSError, ValueError):
                saved = {}
        return cls(
            target=target or os.environ.get("RELAY_TARGET") or saved.get("target") or "127.0.0.1:50051",
            api_key=api_key or os.environ.get("RELAY_API_KEY") or saved.get("api_key", ""),
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.target)

    def jobs(self, channel: grpc.aio.Channel) -> job_service_pb2_grpc.JobServiceStub:
        return job_service_pb2_grpc.JobServiceStub(channel)

    def controller(self, channel: grpc.aio.Channel) -> migration_controller_pb2_grpc.MigrationControllerStub:
        return migration_controller_pb2_grpc.MigrationControllerStub(channel)
