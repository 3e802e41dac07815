"""The console's verification, cleanup and reverse copy pages: start a run (dry run first), follow it, read
its summary. The same rules as every page (``relay.console.pages``): a live session, CSRF and same
origin on every POST, migration:admin for an action.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from relay.console import sse
from relay.console.controller import RpcFailure
from relay.console.pages import (
    RUN_KINDS,
    _audit,
    _back,
    _console,
    _dry_run,
    _number,
    _refused,
    _render,
    _resume,
    _workspace,
    action,
    page,
    stream,
)
from relay.console.session import COOKIE_NAME, Session
from relay.console.views import (
    cleanup_view,
    verification_view,
)
from relay.v1 import cleanup_pb2, verification_pb2

log = logging.getLogger("relay.console")


@page
async def verification(request: Request, session: Session) -> Response:
    console = _console(request)
    run = console.runs.current.get("verification")
    errors: list[str] = []
    latest = run.latest if run is not None and not run.finished else None
    if latest is None:
        try:
            latest = await console.controller.get_verification(session.api_key)
        except RpcFailure as failure:
            errors.append(str(failure))
    streams = _live_streams(console.runs, ("verification",))
    return _render(
        request,
        "verification.html",
        session,
        run=run,
        verification=verification_view(latest) if latest is not None else None,
        errors=errors,
        streams=streams,
        live_state="running" if streams else "",
    )


def _live_streams(runs: Any, kinds: tuple[str, ...]) -> list[str]:
    """The event streams of the runs of these kinds still going, for the page to follow."""
    return [
        f"/events/run/{kind}"
        for kind in kinds
        if (run := runs.current.get(kind)) is not None and not run.finished
    ]


@action(back="/verification")
async def start_verification(request: Request, session: Session, form: FormData) -> Response:
    console = _console(request)
    verify = verification_pb2.VerifyMigrationRequest(
        workspace_id=_workspace(form), rate_limit=_number(form, "rps"), resume=_resume(form)
    )
    return await _start_run(
        request, session, "verification", False, console.controller.verify(session.api_key, verify)
    )


async def _start_run(
    request: Request, session: Session, kind: str, dry_run: bool, events: AsyncIterator[Any]
) -> Response:
    console = _console(request)
    where = "/verification" if kind == "verification" else "/cleanup"
    current = console.runs.current.get(kind)
    if current is not None and not current.finished:
        session.flash("error", f"A {kind} started from this console is still running.")
        return _back(request, where)
    field = "verification" if kind == "verification" else "cleanup"
    run = console.runs.start(kind, session.who, dry_run, events, field)
    await console.runs.wait_first(run)
    mode = "" if kind == "verification" else (" (dry run)" if dry_run else " (execute)")
    if run.failure and run.latest is None:  # refused before it began: the last real run stays shown
        if current is not None:
            console.runs.current[kind] = current
        else:
            console.runs.current.pop(kind, None)
        _audit(session, f"start {kind}{mode}: refused: {run.failure}")
        session.flash("error", f"The {kind} did not start: {run.failure}")
    else:
        _audit(session, f"started {kind}{mode} {getattr(run.latest, field + '_id', '')}")
        session.flash("ok", f"{kind.capitalize()}{mode} started.")
    return _back(request, where)


@page
async def cleanup(request: Request, session: Session) -> Response:
    runs = _console(request).runs
    views = {}
    for kind in ("cleanup", "reverse-copy"):
        run = runs.current.get(kind)
        views[kind] = cleanup_view(run.latest, kind) if run is not None and run.latest is not None else None
    streams = _live_streams(runs, ("cleanup", "reverse-copy"))
    return _render(
        request, "cleanup.html", session, runs=runs.current, views=views, errors=[], streams=streams
    )


@action(back="/cleanup")
async def start_cleanup(request: Request, session: Session, form: FormData) -> Response:
    req = cleanup_pb2.CleanupLegacyRequest(
        dry_run=_dry_run(form), rate_limit=_number(form, "rps"), resume=_resume(form)
    )
    events = _console(request).controller.cleanup(session.api_key, req)
    return await _start_run(request, session, "cleanup", req.dry_run, events)


@action(back="/cleanup")
async def start_reverse_copy(request: Request, session: Session, form: FormData) -> Response:
    req = cleanup_pb2.ReverseCopyRequest(
        dry_run=_dry_run(form),
        workspace_id=_workspace(form),
        rate_limit=_number(form, "rps"),
        resume=_resume(form),
    )
    events = _console(request).controller.reverse_copy(session.api_key, req)
    return await _start_run(request, session, "reverse-copy", req.dry_run, events)


@stream
async def run_events(request: Request, session: Session) -> Response:
    console = _console(request)
    kind = request.path_params["kind"]
    if kind not in RUN_KINDS:
        return _refused(request, 404, "no such run")

    async def frames() -> AsyncIterator[str]:
        seen = -1
        while True:
            run = console.runs.current.get(kind)
            if run is None or console.sessions.get(request.cookies.get(COOKIE_NAME)) is None:
                break
            changed = run.changed
            if run.version != seen and run.latest is not None:
                seen = run.version
                view = (
                    verification_view(run.latest)
                    if kind == "verification"
                    else cleanup_view(run.latest, kind)
                )
                view["failure"] = run.failure
                view["kind"] = kind
                yield sse.frame("run", view)
            if run.finished:
                break
            try:
                await asyncio.wait_for(changed.wait(), 15)
            except TimeoutError:
                yield ": still here\n\n"
        yield sse.frame("end", {})

    return sse.response(frames())
