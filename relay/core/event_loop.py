"""The event loop a Relay process runs on: uvloop when it is installed (``pip install 'relay[fast]'``),
else asyncio's own. ``RELAY_EVENT_LOOP=asyncio`` keeps asyncio's loop even when uvloop is there.

bench/README.md has the measurement that makes uvloop worth having (JobService throughput, side by side).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_name(env: dict[str, str] | None = None) -> str:
    """``uvloop`` or ``asyncio``: the loop :func:`run` uses."""
    choice = (os.environ if env is None else env).get("RELAY_EVENT_LOOP", "").strip().lower()
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_name` names."""
    if loop_name() == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
