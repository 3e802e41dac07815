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
        Route("/", pages.overview, methods=["GET"], name="overview"),
        Route("/stage", pages.set_stage, methods=["POST"]),
        Route("/backfill", pages.backfill, methods=["GET"], name="backfill"),
        Route("/backfill/start", pages.start_backfill, methods=["POST"]),
        Route("/backfill/{action:str}", pages.control_backfill, methods=["POST"]),
        Route("/events/backfill", pages.backfill_events, methods=["GET"]),
        Route("/verification", run_pages.verification, methods=["GET"], name="verification"),
        Route("/verification/start", run_pages.start_verification, methods=["POST"]),
        Route("/cleanup", run_pages.cleanup, methods=["GET"], name="cleanup"),
        Route("/cleanup/start", run_pages.start_cleanup, methods=["POST"]),
        Route("/reverse-copy/start", run_pages.start_reverse_copy, methods=["POST"]),
        Route("/events/run/{kind:str}", run_pages.run_events, methods=["GET"]),
        Route("/signin", pages.signin_form, methods=["GET"], name="signin"),
        Route("/signin", pages.signin, methods=["POST"]),
        Route("/signout", pages.signout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.console = console
    app.add_middleware(SecurityHeaders)
    return app
