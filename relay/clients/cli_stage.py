"""relayctl stage get | set | clear: the migration stage of the global default or of one workspace."""

from __future__ import annotations

import click

from relay.clients.cli_common import call, json_option, run, show
from relay.core.stages import Stage
from relay.v1 import stage_pb2

#: legacy-only, dual-write, read-new, new-only, legacy-cleaned (LEGACY_ONLY and the like work too).
STAGE_NAMES = {stage.name.lower().replace("_", "-"): stage for stage in Stage}


def _stage(value: str) -> Stage:
    name = value.strip().lower().replace("_", "-").removeprefix("stage-")
    if name not in STAGE_NAMES:
        raise click.BadParameter(f"must be one of {', '.join(STAGE_NAMES)}", param_hint="STAGE")
    return STAGE_NAMES[name]


def _when(stamp: object) -> str:
    return stamp.ToJsonString() if stamp.seconds or stamp.nanos else "-"  # type: ignore[attr-defined]


def describe(setting: stage_pb2.StageSetting) -> str:
    scope = f"workspace {setting.workspace_id}" if setting.workspace_id else "global default"
    if setting.inherited:
        scope += " (follows the global default)"
    stage = Stage(setting.stage).name if setting.stage else "UNSPECIFIED"
    if setting.shadow_reads:
        stage += " (shadow reads on)"
    rows = [
        ("scope", scope),
        ("stage", stage),
        ("source", f"{setting.source}, version {setting.version}, updated {_when(setting.update_time)}"),
        ("entered", _when(setting.enter_time)),
        ("new layout written since", _when(setting.new_writes_start_time)),
        ("legacy writes stopped", _when(setting.legacy_writes_stop_time)),
        ("legacy writes resumed", _when(setting.legacy_writes_resume_time)),
    ]
    return "\n".join(f"{label + ':':<26}{value}" for label, value in rows)


@click.group("stage", help="Show or change the migration stage, globally or for one workspace.")
def stage() -> None:
    pass


@stage.command("get", help="Show the stage in force for a workspace, or the global default.")
@click.option("--workspace", default="", help="A workspace id; default: the global default.")
@json_option()
@run
async def get(ctx: click.Context, workspace: str, as_json: bool) -> int:
    reply = await call(ctx, "GetStage", stage_pb2.GetStageRequest(workspace_id=workspace))
    show(reply.setting, as_json, describe)
    return 0


@stage.command(
    "set",
    help="Move the global default, or one workspace, to STAGE: "
    + ", ".join(STAGE_NAMES)
    + ". A move that could lose or hide data is refused with the reason and what to run first.",
)
@click.argument("stage_name", metavar="STAGE")
@click.option("--workspace", default="", help="Set an override for this workspace only (a canary).")
@click.option("--shadow", is_flag=True, help="With read-new: also read legacy, compare, count mismatches.")
@run
async def set_(ctx: click.Context, stage_name: str, workspace: str, shadow: bool) -> int:
    target = _stage(stage_name)
    request = stage_pb2.SetStageRequest(workspace_id=workspace, stage=int(target), shadow_reads=shadow)
    reply = await call(ctx, "SetStage", request)
    scope = f"workspace {workspace}" if workspace else "global default"
    click.echo(
        f"{scope}: {Stage(reply.previous.stage).name} -> {Stage(reply.setting.stage).name}"
        f"{' (shadow reads on)' if reply.setting.shadow_reads else ''}, version {reply.setting.version}"
    )
    return 0


@stage.command("clear", help="Remove a workspace's override, so it follows the global default again.")
@click.option("--workspace", required=True)
@run
async def clear(ctx: click.Context, workspace: str) -> int:
    reply = await call(
        ctx, "SetStage", stage_pb2.SetStageRequest(workspace_id=workspace, clear_override=True)
    )
    click.echo(f"workspace {workspace} follows the global default: {Stage(reply.setting.stage).name}")
    return 0
