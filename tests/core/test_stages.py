"""Migration stages: which layouts each stage writes and reads, and the old system's flags as a stage."""

from __future__ import annotations

import pytest

from relay.core.stages import GLOBAL_FIELD, Stage, StageSetting, StageTable, stage_from_flags

#: stage -> (writes legacy, writes new, reads legacy, reads new, prefers new)
LAYOUTS = {
    Stage.LEGACY_ONLY: (True, False, True, False, False),
    Stage.DUAL_WRITE: (True, True, True, True, False),
    Stage.READ_NEW: (True, True, True, True, True),
    Stage.NEW_ONLY: (False, True, False, True, True),
    Stage.LEGACY_CLEANED: (False, True, False, True, True),
}


@pytest.mark.parametrize("stage", list(Stage), ids=lambda s: s.name)
def test_each_stage_writes_and_reads_the_layouts_of_its_name(stage):
    assert (
        stage.writes_legacy,
        stage.writes_new,
        stage.reads_legacy,
        stage.reads_new,
        stage.prefers_new,
    ) == LAYOUTS[stage]


def test_stages_run_in_migration_order():
    assert list(Stage) == sorted(Stage)
    assert [s.name for s in Stage] == ["LEGACY_ONLY", "DUAL_WRITE", "READ_NEW", "NEW_ONLY", "LEGACY_CLEANED"]


@pytest.mark.parametrize(
    "env,stage",
    [
        ({}, Stage.READ_NEW),  # every flag defaults to on (the release notes' flag table)
        ({"AI_JOBS_NEW_SCHEMA": "on", "READ_PREFERS_NEW": "on", "READ_FALLBACK_OLD": "on"}, Stage.READ_NEW),
        ({"AI_JOBS_NEW_SCHEMA": "off"}, Stage.LEGACY_ONLY),
        ({"AI_JOBS_NEW_SCHEMA": "off", "READ_PREFERS_NEW": "on"}, Stage.LEGACY_ONLY),
        ({"READ_PREFERS_NEW": "off"}, Stage.DUAL_WRITE),
        ({"READ_PREFERS_NEW": "false"}, Stage.DUAL_WRITE),
        ({"READ_FALLBACK_OLD": "off"}, Stage.NEW_ONLY),
        ({"READ_FALLBACK_OLD": " OFF "}, Stage.NEW_ONLY),
        ({"READ_FALLBACK_OLD": "0"}, Stage.NEW_ONLY),
        ({"READ_FALLBACK_OLD": "no"}, Stage.NEW_ONLY),
        ({"READ_FALLBACK_OLD": "yes"}, Stage.READ_NEW),
    ],
)
def test_the_old_systems_flags_give_the_starting_stage(env, stage):
    assert stage_from_flags(env) is stage


def test_shadow_reads_apply_only_while_reading_new_with_fallback():
    assert StageSetting(Stage.READ_NEW, shadow_reads=True).shadow
    assert not StageSetting(Stage.DUAL_WRITE, shadow_reads=True).shadow
    assert not StageSetting(Stage.NEW_ONLY, shadow_reads=True).shadow


def test_a_setting_survives_its_json_form():
    setting = StageSetting(Stage.NEW_ONLY, shadow_reads=True, version=4, updated_at="2025-10-18T12:00:00Z")
    assert StageSetting.from_json(setting.to_json()) == setting


def test_workspace_overrides_win_over_the_global_default():
    raw = {
        GLOBAL_FIELD.encode(): StageSetting(Stage.DUAL_WRITE).to_json().encode(),
        b"ws-a": StageSetting(Stage.NEW_ONLY).to_json().encode(),
    }
    table = StageTable.from_hash(raw, StageSetting(Stage.READ_NEW, source="environment"))
    assert table.for_workspace("ws-a").stage is Stage.NEW_ONLY
    assert table.for_workspace("ws-b").stage is Stage.DUAL_WRITE


def test_without_a_stored_default_the_environments_stage_holds():
    fallback = StageSetting(Stage.LEGACY_ONLY, source="environment")
    assert StageTable.from_hash({}, fallback).for_workspace("ws-a") == fallback
