"""The live progress bar of relayctl's long operations (rich), drawn on stderr, and the one way a
command follows such an operation's stream to its last result."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import click
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from relay.clients.cli_common import connection

E = TypeVar("E")
R = TypeVar("R")


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )


async def follow_with_bar(
    events: AsyncIterator[E],
    title: str,
    result_of: Callable[[E], R],
    progress_of: Callable[[R], tuple[float, str]],
    result: R,
) -> R:
    """Follow a stream of events to its end under one progress bar; returns the last result.

    ``result_of`` takes the result out of an event, ``progress_of`` says (percent done, detail) for it;
    ``result`` is what comes back when the stream holds no event at all.
    """
    with progress_bar() as bar:
        task = bar.add_task(title, total=100, detail="")
        async for event in events:
            result = result_of(event)
            percent, detail = progress_of(result)
            bar.update(task, completed=percent, detail=detail)
    return result


@dataclass(frozen=True)
class RunEvents(Generic[E, R]):
    """How ``follow_run`` reads one kind of run's events: the result each carries, what the bar shows
    of a result, and the result of a stream with no event at all."""

    result_of: Callable[[E], R]
    progress_of: Callable[[R], tuple[float, str]]
    empty: Callable[[], R]


async def follow_run(
    ctx: click.Context, method: str, request: Message, title: str, events: RunEvents[E, R]
) -> R:
    """Start the controller's streaming ``method`` and follow it to its end under a bar; the last result."""
    conn = connection(ctx)
    async with conn.channel() as channel:
        stream = getattr(conn.controller(channel), method)(request, metadata=conn.metadata)
        return await follow_with_bar(stream, title, events.result_of, events.progress_of, events.empty())
