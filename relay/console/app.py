"""The migration console as a Starlette app: routes, security headers, and the parts pages share."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.console import pages, run_pages
from relay.console.controller import Controller
from relay.console.runs import Runs
from relay.console.session import DEFAULT_SESSION_SECONDS, SessionStore

HERE = Path(__file__).parent

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make every form POST say Origin: null
    (b"cache-control", b"no-store"),
]


#: The pages (GET, by name), the event streams (GET) and the forms' actions (POST); each handler's
#: decorator in ``pages`` says what it needs of the session.
PAGES: dict[str, tuple[str, Callable[..., Any]]] = {
    "overview": ("/", pages.overview),
    "backfill": ("/backfill", pages.backfill),
    "verification": ("/verification", run_pages.verification),
    "cleanup": ("/cleanup", run_pages.cleanup),
    "signin": ("/signin", pages.signin_form),
}
STREAMS: dict[str, Callable[..., Any]] = {
    "/events/backfill": pages.backfill_events,
    "/events/run/{kind:str}": run_pages.run_events,
}
ACTIONS: dict[str, Callable[..., Any]] = {
    "/stage": pages.set_stage,
    "/backfill/start": pages.start_backfill,
    "/backfill/{action:str}": pages.control_backfill,
    "/verification/start": run_pages.start_verification,
    "/cleanup/start": run_pages.start_cleanup,
    "/reverse-copy/start": run_pages.start_reverse_copy,
    "/signin": pages.signin,
    "/signout": pages.signout,
}


@dataclass
class Console:
    controller: Controller
    sessions: SessionStore
    runs: Runs
    templates: Jinja2Templates


class SecurityHeaders:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        static = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", [])}
                if static:
                    names.add(b"cache-control")
                    message["headers"] = [*message.get("headers", []), (b"cache-control", b"no-cache")]
                message["headers"] = [
                    *message.get("headers", []),
                    *((n, v) for n, v in SECURITY_HEADERS if n not in names),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(
    target: str,
    *,
    session_seconds: float = DEFAULT_SESSION_SECONDS,
    secret: bytes | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The console for the controller at ``target`` (host:port of its gRPC server)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    console = Console(
        Controller(target), SessionStore(secret, session_seconds, clock), Runs(clock), templates
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        await console.runs.stop()
        await console.controller.close()

    routes = [
        *(Route(path, handler, methods=["GET"], name=name) for name, (path, handler) in PAGES.items()),
        *(Route(path, handler, methods=["GET"]) for path, handler in STREAMS.items()),
        *(Route(path, handler, methods=["POST"]) for path, handler in ACTIONS.items()),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.console = console
    app.add_middleware(SecurityHeaders)
    return app
