"""Wires the MigrationController into a grpc.aio server."""

from __future__ import annotations

from typing import Any

import grpc

from relay.controller.base import ControllerParts
from relay.controller.repairer import OutboxRepairer
from relay.controller.servicer import ControllerServicer
from relay.core.auth import KeyRing
from relay.core.config import Settings
from relay.core.stage_store import StageView
from relay.core.stores import Stores
from relay.core.telemetry import Metrics
from relay.v1 import migration_controller_pb2, migration_controller_pb2_grpc


async def add_controller(
    server: grpc.aio.Server,
    stores: Stores,
    settings: Settings,
    metrics: Metrics,
    keyring: KeyRing,
    stages: StageView,
    background: list[Any],
) -> str:
    """Register the controller on ``server``; returns its full service name (for health and reflection)."""
    servicer = ControllerServicer(ControllerParts(stores.new, settings, keyring, stages, metrics, stores))
    migration_controller_pb2_grpc.add_MigrationControllerServicer_to_server(servicer, server)
    await servicer.backfills.start()  # resumes orphaned backfills; stopped at shutdown
    background.append(servicer.backfills)
    if not stores.shared:
        repairer = OutboxRepairer(stores, settings.idempotency_ttl_seconds, metrics)
        await repairer.start()
        background.append(repairer)
    return migration_controller_pb2.DESCRIPTOR.services_by_name["MigrationController"].full_name
