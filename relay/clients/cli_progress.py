"""The live progress bar of relayctl's long operations (rich), drawn on stderr."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

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
