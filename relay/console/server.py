"""Runs the console under uvicorn inside ``relay serve``'s event loop, beside the controller."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from relay.console.app import create_app
from relay.core.config import Settings

log = logging.getLogger("relay.console")

_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: ``relay serve`` owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def controller_target(grpc_listen: str, grpc_port: int) -> str:
    """Where the console reaches this process's controller."""
    host = grpc_listen.rpartition(":")[0]
    if host in _WILDCARDS:
        host = "127.0.0.1"
    return f"{host}:{grpc_port}"


class ConsoleServer:
    def __init__(self, server: _Server, task: asyncio.Task[None], port: int):
        self._server, self._task, self.port = server, task, port

    async def stop(self) -> None:
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def start_console(settings: Settings, grpc_port: int) -> ConsoleServer | None:
    """Serve the console on settings.console_listen (None when it is empty, or its address is taken:
    the controller goes on without its console, and the log says why)."""
    if not settings.console_listen:
        return None
    if settings.tls.enabled:
        # The console reaches the controller over a loopback gRPC channel, which is plaintext; with TLS
        # configured there is no plaintext port. Say so rather than serve pages that cannot load.
        log.error(
            "the console cannot reach a TLS-only controller yet; serving without it "
            "(unset RELAY_CONSOLE_LISTEN to silence this)",
            extra={"listen": settings.console_listen},
        )
        return None
    host, port = split_listen(settings.console_listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        log.error(
            "the console cannot listen: %s; serving without it",
            exc,
            extra={"listen": settings.console_listen},
        )
        return None
    sock.listen(128)
    sock.setblocking(False)
    tls = bool(settings.console_tls_certfile)
    config = uvicorn.Config(
        create_app(controller_target(settings.listen, grpc_port)),
        log_config=None,
        access_log=False,  # our own log says who did what; the access log would add nothing safe
        lifespan="on",
        timeout_graceful_shutdown=2,
        ssl_certfile=settings.console_tls_certfile or None,
        ssl_keyfile=settings.console_tls_keyfile or None,
        proxy_headers=False,
        server_header=False,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn sets a flag, not an event)
        await asyncio.sleep(0.02)
    if task.done():
        task.result()
        raise OSError("the console stopped at start-up")
    bound = sock.getsockname()[1]
    scheme = "https" if tls else "http"
    log.info("console listening", extra={"listen": f"{scheme}://{host}:{bound}"})
    return ConsoleServer(server, task, bound)
