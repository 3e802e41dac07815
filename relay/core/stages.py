"""Migration stages: which layouts a stage writes and reads, and which transitions are safe.

legacy only → dual-write → read new (optionally shadow) → new only → legacy cleaned.
Rollback is a stage change backwards, refused where it would hide data written since.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from relay.v1 import stage_pb2


class Stage(enum.IntEnum):
    LEGACY_ONLY = stage_pb2.STAGE_LEGACY_ONLY
    DUAL_WRITE = stage_pb2.STAGE_DUAL_WRITE
    READ_NEW = stage_pb2.STAGE_READ_NEW
    NEW_ONLY = stage_pb2.STAGE_NEW_ONLY
    LEGACY_CLEANED = stage_pb2.STAGE_LEGACY_CLEANED

    @property
    def writes_legacy(self) -> bool:
        return self in (Stage.LEGACY_ONLY, Stage.DUAL_WRITE, Stage.READ_NEW)

    @property
    def writes_new(self) -> bool:
        return self is not Stage.LEGACY_ONLY

    # A layout is read in exactly the stages that keep it up to date (write it), so that no read ever
    # meets a layout left behind.
    reads_legacy = writes_legacy
    reads_new = writes_new

    @property
    def prefers_new(self) -> bool:
        return self >= Stage.READ_NEW


@dataclass(frozen=True, slots=True)
class StageSetting:
    stage: Stage
    shadow_reads: bool = False
    version: int = 0
    updated_at: str = ""
    source: str = "redis"

    @property
    def shadow(self) -> bool:
        return self.shadow_reads and self.stage is Stage.READ_NEW

    def to_json(self) -> str:
        return json.dumps(
            {
                "stage": self.stage.name,
                "shadow_reads": self.shadow_reads,
                "version": self.version,
                "updated_at": self.updated_at,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> StageSetting:
        data = json.loads(text)
        return cls(
            stage=Stage[data["stage"]],
            shadow_reads=bool(data.get("shadow_reads", False)),
            version=int(data.get("version", 0)),
            updated_at=str(data.get("updated_at", "")),
        )


GLOBAL_FIELD = "*"


def _flag(env: dict[str, str], name: str) -> bool:
    return env.get(name, "on").strip().lower() not in ("off", "0", "false", "no")


def stage_from_flags(env: dict[str, str]) -> Stage:
    """The old system's environment flags (each ``on`` when unset) as a stage.

    ``AI_JOBS_NEW_SCHEMA=off`` is legacy only; with it on, ``READ_PREFERS_NEW=off`` is dual-write,
    ``READ_FALLBACK_OLD=off`` is the old "phase 4" (new only), and all three on is read-new.
    """
    if not _flag(env, "AI_JOBS_NEW_SCHEMA"):
        return Stage.LEGACY_ONLY
    if not _flag(env, "READ_PREFERS_NEW"):
        return Stage.DUAL_WRITE
    if not _flag(env, "READ_FALLBACK_OLD"):
        return Stage.NEW_ONLY
    return Stage.READ_NEW


class StageTable:
    """The global default and the per-workspace overrides, as one replica last read them."""

    def __init__(self, default: StageSetting, overrides: dict[str, StageSetting] | None = None):
        self.default = default
        self.overrides = dict(overrides or {})

    def for_workspace(self, workspace_id: str) -> StageSetting:
        return self.overrides.get(workspace_id, self.default)

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes], fallback: StageSetting) -> StageTable:
        default = fallback
        overrides: dict[str, StageSetting] = {}
        for field, value in raw.items():
            name = field.decode() if isinstance(field, bytes) else field
            setting = StageSetting.from_json(value)
            if name == GLOBAL_FIELD:
                default = setting
            else:
                overrides[name] = setting
        return cls(default, overrides)
