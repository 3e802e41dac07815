"""The console's pages and actions.

Every page needs a live session; every POST also needs the session's CSRF token and a same-origin
request, and an action also needs a session with migration:admin. Then the controller checks the key
again on its own, since every call carries it. Each action is logged with who (a prefix of the key's
digest) and what; the key itself never reaches a log, a URL or a page.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from relay.console import csrf, sse
from relay.console.controller import RpcFailure
from relay.console.session import COOKIE_NAME, ROLE_ADMIN, ROLE_VIEW, SIGNIN_COOKIE_NAME, Session
from relay.console.views import (
    STAGE_ORDER,
    backfill_view,
    cleanup_view,
    stage_name,
    stage_view,
    verification_view,
)
from relay.core.ids import is_workspace_id
from relay.core.stages import Stage
from relay.v1 import backfill_pb2, stage_pb2

log = logging.getLogger("relay.console")

SIGNIN_SECONDS = 600
MAX_KEY_LENGTH = 512
RUN_KINDS = ("verification", "cleanup", "reverse-copy")

Handler = Callable[[Request, Session], Awaitable[Response]]


def _console(request: Request) -> Any:
    return request.app.state.console


def _session(request: Request) -> Session | None:
    return _console(request).sessions.get(request.cookies.get(COOKIE_NAME))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _render(
    request: Request, name: str, session: Session | None, status: int = 200, **context: Any
) -> Response:
    """A page; ``streams`` (event stream URLs the page follows) and ``live_state`` (the state rendered,
    which live updates then leave) go on its body for console.js."""
    context.update(
        session=session,
        flashes=session.take_flashes() if session else context.pop("flashes", []),
        csrf_token=session.csrf_token if session else context.get("csrf_token", ""),
        page=name.removesuffix(".html"),
    )
    return _console(request).templates.TemplateResponse(request, name, context, status_code=status)


def _refused(request: Request, status: int, text: str) -> Response:
    """A refusal as a small page (the session, if any, is not shown: it may be the problem)."""
    return _render(request, "refused.html", None, status, message=text)


def _audit(session: Session, what: str, **extra: Any) -> None:
    """Who did what: the one log line every action writes (the key's digest prefix, never the key)."""
    log.info("console: %s (%s) %s", session.who, session.role, what, extra=extra)


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A GET page: signed in, or sent to the sign-in page."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        session = _session(request)
        if session is None:
            return RedirectResponse("/signin", status_code=303)
        return await handler(request, session)

    return wrapper


def stream(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """An event stream: signed in, or 401 (EventSource gives up on it)."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        session = _session(request)
        if session is None:
            return _refused(request, 401, "sign in first")
        return await handler(request, session)

    return wrapper


def action(
    admin: bool = True, back: str = ""
) -> Callable[[Callable[..., Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]:
    """A POST that changes something: a session, the same origin, its CSRF token and (usually) admin.

    With ``back`` (the page of the form), a ValueError from reading the form is what the operator must
    fix: it is flashed on that page, and nothing was asked of the controller.
    """

    def decorate(handler: Callable[..., Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def wrapper(request: Request) -> Response:
            session = _session(request)
            if session is None:
                return _refused(request, 401, "not signed in, or the session expired: sign in again")
            if not csrf.same_origin(request):
                log.warning("console: %s: cross-origin POST %s refused", session.who, request.url.path)
                return _refused(request, 403, "refused: the request came from another site")
            form = await request.form()
            if not csrf.token_matches(session.csrf_token, form.get(csrf.FIELD), request):
                log.warning("console: %s: POST %s without a valid CSRF token", session.who, request.url.path)
                return _refused(
                    request, 403, "refused: missing or wrong CSRF token; reload the page and retry"
                )
            if admin and not session.is_admin:
                log.warning(
                    "console: %s (view): %s refused, needs migration:admin", session.who, request.url.path
                )
                return _refused(
                    request, 403, "refused: this api key can view but not change (needs migration:admin)"
                )
            if not back:
                return await handler(request, session, form)
            try:
                return await handler(request, session, form)
            except ValueError as exc:
                session.flash("error", str(exc))
                return _back(request, back)

        return wrapper

    return decorate


def _back(request: Request, default: str) -> RedirectResponse:
    return RedirectResponse(default, status_code=303)


def _number(form: FormData, name: str, kind: type = float, default: float = 0) -> Any:
    raw = str(form.get(name) or "").strip()
    if not raw:
        return kind(default)
    value = kind(raw)
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        raise ValueError(f"{name} must be a finite number")
    return value


def _dry_run(form: FormData) -> bool:
    """The mode button of a form that offers a dry run and an execute."""
    mode = form.get("mode")
    if mode not in ("dry-run", "execute"):
        raise ValueError("choose a dry run or an execute")
    return mode == "dry-run"


def _resume(form: FormData) -> bool:
    return form.get("resume") == "1"


def _workspace(form: FormData | dict[str, Any], name: str = "workspace") -> str:
    value = str(form.get(name) or "").strip()
    if value and not is_workspace_id(value):
        raise ValueError(f"'{value[:40]}' is not a workspace id (^[a-z0-9][a-z0-9_-]{{0,31}}$)")
    return value


# ---------------------------------------------------------------- sign-in


async def signin_form(request: Request) -> Response:
    if _session(request) is not None:
        return RedirectResponse("/", status_code=303)
    return _signin_page(request, [])


def _signin_page(request: Request, flashes: list[tuple[str, str]], status: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    response = _render(request, "signin.html", None, status, flashes=flashes, csrf_token=token)
    response.set_cookie(
        SIGNIN_COOKIE_NAME,
        _console(request).sessions.sign(token),
        max_age=SIGNIN_SECONDS,
        httponly=True,
        secure=_secure(request),
        samesite="strict",
        path="/signin",
    )
    return response


async def signin(request: Request) -> Response:
    console = _console(request)
    if not csrf.same_origin(request):
        return _refused(request, 403, "refused: the request came from another site")
    form = await request.form()
    expected = console.sessions.unsign(request.cookies.get(SIGNIN_COOKIE_NAME), SIGNIN_SECONDS)
    if not expected or not csrf.token_matches(expected, form.get(csrf.FIELD), request):
        return _signin_page(request, [("error", "The sign-in form expired; please try again.")], 403)
    api_key = str(form.get("api_key") or "").strip()
    if not api_key or len(api_key) > MAX_KEY_LENGTH or not api_key.isprintable():
        return _signin_page(request, [("error", "Enter an api key.")], 400)
    try:
        await console.controller.get_stage(api_key)
    except RpcFailure as failure:
        text = {
            grpc.StatusCode.UNAUTHENTICATED: "That api key is not valid.",
            grpc.StatusCode.PERMISSION_DENIED: "That api key has neither migration:admin nor migration:view.",
        }.get(failure.code, f"The controller did not answer: {failure}")
        log.warning("console: sign-in refused: %s", failure.code.name)
        return _signin_page(request, [("error", text)], 401 if failure.code.name != "UNAVAILABLE" else 503)
    role = ROLE_ADMIN if await console.controller.can_administer(api_key) else ROLE_VIEW
    session, cookie = console.sessions.create(api_key, role)
    _audit(session, "signed in")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        cookie,
        max_age=int(console.sessions.max_age),
        httponly=True,
        secure=_secure(request),
        samesite="strict",
        path="/",
    )
    response.delete_cookie(SIGNIN_COOKIE_NAME, path="/signin", httponly=True, samesite="strict")
    return response


@action(admin=False)
async def signout(request: Request, session: Session, form: FormData) -> Response:
    _console(request).sessions.end(session)
    _audit(session, "signed out")
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict", secure=_secure(request))
    return response


# ---------------------------------------------------------------- overview and stages


@page
async def overview(request: Request, session: Session) -> Response:
    console = _console(request)
    ctl, key, runs = console.controller, session.api_key, console.runs
    errors: list[str] = []
    try:
        asked = _workspace(dict(request.query_params))
    except ValueError as exc:
        asked, errors = "", [str(exc)]

    async def optional(coro: Awaitable[Any]) -> Any:
        try:
            return await coro
        except RpcFailure as failure:
            errors.append(str(failure))
            return None

    global_setting, backfill, verification = await asyncio.gather(
        optional(ctl.get_stage(key)), optional(ctl.get_backfill(key)), optional(ctl.get_verification(key))
    )
    known = set(runs.workspaces)
    if verification is not None:
        known.update(w.workspace_id for w in verification.workspaces)
    if asked:
        known.add(asked)
    settings = await asyncio.gather(*(optional(ctl.get_stage(key, w)) for w in sorted(known)))
    workspaces = [stage_view(s) for s in settings if s is not None]
    scopes = [stage_view(global_setting)] if global_setting is not None else []
    scopes += [w for w in workspaces if not w["inherited"]]
    refusals = {scope: r for scope, r in runs.refusals.items()}
    last_runs = {
        kind: cleanup_view(run.latest, kind) if run.latest is not None else None
        for kind, run in runs.current.items()
        if kind != "verification"
    }
    return _render(
        request,
        "overview.html",
        session,
        scopes=scopes,
        followers=[w for w in workspaces if w["inherited"]],
        backfill=backfill_view(backfill) if backfill is not None else None,
        verification=verification_view(verification) if verification is not None else None,
        runs=runs.current,
        last_runs=last_runs,
        refusals=refusals,
        errors=errors,
        stages=[s.name for s in STAGE_ORDER],
        now=time.time(),
    )


@action(back="/")
async def set_stage(request: Request, session: Session, form: FormData) -> Response:
    console = _console(request)
    workspace_id = _workspace(form)
    clear = form.get("clear") == "1"
    target = str(form.get("stage") or "")
    if not clear and target not in Stage.__members__:
        raise ValueError("choose a stage")
    shadow = form.get("shadow") == "1"
    scope_label = f"workspace {workspace_id}" if workspace_id else "global default"
    request_pb = (
        stage_pb2.SetStageRequest(workspace_id=workspace_id, clear_override=True)
        if clear
        else stage_pb2.SetStageRequest(
            workspace_id=workspace_id, stage=int(Stage[target]), shadow_reads=shadow and target == "READ_NEW"
        )
    )
    what = "clear the override" if clear else f"set stage {target}{' (shadow reads)' if shadow else ''}"
    try:
        reply = await console.controller.set_stage(session.api_key, request_pb)
    except RpcFailure as failure:
        _audit(session, f"{what} of {scope_label}: refused: {failure.code.name} {failure.reason}")
        console.runs.refuse(workspace_id, target or "clear", str(failure), session.who)
        session.flash("error", f"{scope_label}: refused. {failure}")
        return _back(request, "/")
    if workspace_id:
        console.runs.workspaces.add(workspace_id)
    console.runs.clear_refusal(workspace_id)
    old, new = stage_name(reply.previous.stage), stage_name(reply.setting.stage)
    shadow_note = " (shadow reads on)" if reply.setting.shadow_reads else ""
    _audit(session, f"{what} of {scope_label}: {old} -> {new}", workspace_id=workspace_id or "*")
    session.flash("ok", f"{scope_label}: {old} -> {new}{shadow_note}, version {reply.setting.version}")
    return _back(request, "/")


# ---------------------------------------------------------------- backfill


@page
async def backfill(request: Request, session: Session) -> Response:
    console = _console(request)
    errors: list[str] = []
    current = None
    try:
        current = await console.controller.get_backfill(session.api_key)
    except RpcFailure as failure:
        errors.append(str(failure))
    view = None
    live: dict[str, Any] = {}
    if current is not None:
        console.runs.sample(current)
        view = backfill_view(current, console.runs.samples.get(current.backfill_id))
        if not view["terminal"]:
            live = {"streams": [f"/events/backfill?id={view['id']}"], "live_state": view["state"]}
    return _render(request, "backfill.html", session, backfill=view, errors=errors, **live)


@action(back="/backfill")
async def start_backfill(request: Request, session: Session, form: FormData) -> Response:
    console = _console(request)
    mode = form.get("mode")
    start = backfill_pb2.StartBackfillRequest(
        dry_run=_dry_run(form),
        workspace_id=_workspace(form),
        rate_limit=_number(form, "rps"),
        batch_size=_number(form, "batch", int),
        max_keys=_number(form, "max_keys", int),
    )
    events = console.controller.start_backfill(session.api_key, start)
    try:
        first = await anext(events)
    except (RpcFailure, StopAsyncIteration) as failure:
        _audit(session, f"start backfill ({mode}): refused: {failure}")
        session.flash("error", f"Backfill not started: {failure}")
        return _back(request, "/backfill")
    finally:
        await events.aclose()  # the backfill runs in the controller; the page watches it
    b = first.backfill
    console.runs.sample(b)
    _audit(
        session,
        f"started backfill {b.backfill_id} ({mode}, rps {start.rate_limit:g}, batch {start.batch_size}, "
        f"max keys {start.max_keys}, workspace {start.workspace_id or 'all'})",
        backfill_id=b.backfill_id,
    )
    mode_text = "dry run: nothing is written" if start.dry_run else "execute"
    session.flash("ok", f"Backfill {b.backfill_id} started ({mode_text}).")
    return _back(request, "/backfill")


CONTROL = {"pause": "PauseBackfill", "resume": "ResumeBackfill", "cancel": "CancelBackfill"}
PAST = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}


@action(back="/backfill")
async def control_backfill(request: Request, session: Session, form: FormData) -> Response:
    console = _console(request)
    verb = request.path_params["action"]
    backfill_id = str(form.get("backfill_id") or "")
    try:
        if verb == "rate":
            rate = _number(form, "rps")
            reply = await console.controller.update_backfill(session.api_key, backfill_id, rate)
            what = f"set the rate of backfill {backfill_id} to {rate:g} keys/s"
        elif verb in CONTROL:
            reply = await console.controller.backfill_control(session.api_key, CONTROL[verb], backfill_id)
            what = f"{PAST[verb]} backfill {backfill_id}"
        else:
            return _refused(request, 404, "no such action")
    except RpcFailure as failure:
        _audit(
            session, f"{verb} backfill {backfill_id}: refused: {failure.code.name}", backfill_id=backfill_id
        )
        session.flash("error", f"{verb.capitalize()} refused: {failure}")
        return _back(request, "/backfill")
    console.runs.sample(reply)
    _audit(session, what, backfill_id=backfill_id)
    session.flash(
        "ok", f"Backfill {backfill_id}: {what.split(' backfill')[0]}; now {backfill_view(reply)['state']}."
    )
    return _back(request, "/backfill")


@stream
async def backfill_events(request: Request, session: Session) -> Response:
    console = _console(request)
    backfill_id = request.query_params.get("id", "")
    if backfill_id and not backfill_id.startswith("bf-"):
        return _refused(request, 400, "not a backfill id")

    async def frames() -> AsyncIterator[str]:
        try:
            async for event in console.controller.watch_backfill(session.api_key, backfill_id):
                if console.sessions.get(request.cookies.get(COOKIE_NAME)) is None:
                    return
                b = event.backfill
                console.runs.sample(b)
                yield sse.frame("backfill", backfill_view(b, console.runs.samples.get(b.backfill_id)))
        except RpcFailure as failure:
            yield sse.frame("failure", {"text": str(failure)})
        yield sse.frame("end", {})

    return sse.response(frames())


# ---------------------------------------------------------------- verification, cleanup, reverse copy
