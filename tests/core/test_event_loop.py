"""The event loop a Relay process runs on: uvloop when installed, asyncio's when asked or when not."""

from __future__ import annotations

import asyncio
import importlib.util

from relay.core import event_loop


def test_asyncio_is_chosen_when_asked_and_uvloop_when_it_is_installed() -> None:
    assert event_loop.loop_name({"RELAY_EVENT_LOOP": "asyncio"}) == "asyncio"
    installed = importlib.util.find_spec("uvloop") is not None
    assert event_loop.loop_name({}) == ("uvloop" if installed else "asyncio")


def test_run_runs_the_coroutine_on_the_chosen_loop() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    module = event_loop.run(which())

    assert module.startswith("uvloop" if event_loop.loop_name() == "uvloop" else "asyncio")
