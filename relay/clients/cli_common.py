"""What every relayctl command shares: the connection options, error reporting and exit codes.

Exit codes: 0 success; 1 the operation ran and failed (a failed backfill, a dirty verification);
2 usage error; 3 refused by the server (INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND, ...);
4 authentication or permission; 5 the server is unreachable or unavailable; 6 cancelled; 130 Ctrl-C.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click
import grpc
from google.protobuf import json_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message

from relay.clients.connection import Connection
from relay.core.rpc_errors import error_info

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_AUTH = 4
EXIT_UNREACHABLE = 5
EXIT_CANCELLED = 6

_AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
_UNREACHABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

T = TypeVar("T")
M = TypeVar("M", bound=Message)


def exit_code_for(code: grpc.StatusCode) -> int:
    if code in _AUTH_CODES:
        return EXIT_AUTH
    if code in _UNREACHABLE_CODES:
        return EXIT_UNREACHABLE
    if code is grpc.StatusCode.CANCELLED:
        return EXIT_CANCELLED
    return EXIT_REFUSED


def run(coro_fn: Callable[..., Coroutine[Any, Any, int | None]]) -> Callable[..., None]:
    """Run an async command, given the click context first; report gRPC errors in one line (with the
    ErrorInfo reason) and exit."""

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            code = asyncio.run(coro_fn(*args, **kwargs))
        except grpc.aio.AioRpcError as exc:
            info = error_info(exc)
            reason = f" [{info.reason}]" if info else ""
            click.echo(f"error: {exc.code().name}{reason}: {exc.details()}", err=True)
            sys.exit(exit_code_for(exc.code()))
        except KeyboardInterrupt:
            sys.exit(130)
        sys.exit(code or EXIT_OK)

    return click.pass_context(wrapper)


def connection(ctx: click.Context) -> Connection:
    return ctx.find_root().obj


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json(message: Message) -> None:
    click.echo(json.dumps(to_dict(message), sort_keys=False))


def show(message: M, as_json: bool, describe: Callable[[M], str]) -> None:
    """A reply as JSON (``--json``, for scripts) or as the command's text for people."""
    if as_json:
        print_json(message)
    else:
        click.echo(describe(message))


async def call(
    ctx: click.Context, method: str, request: Message, *, jobs: bool = False, retry_execute: bool = False
) -> Any:
    """One unary RPC of the MigrationController (or, with ``jobs``, the JobService) on its own channel;
    ``retry_execute`` as ``Connection.channel`` takes it."""
    conn = connection(ctx)
    async with conn.channel(retry_execute=retry_execute) as channel:
        stub = conn.jobs(channel) if jobs else conn.controller(channel)
        return await getattr(stub, method)(request, metadata=conn.metadata)


def enum_names(enum: EnumTypeWrapper, *, lower: bool = False, unset: bool = True) -> dict[int, str]:
    """A protobuf enum's names without their common prefix (``BACKFILL_STATE_RUNNING`` -> ``RUNNING``),
    derived from the enum so no hand-written map can fall behind it; ``unset=False`` leaves out the
    zero value (``*_UNSPECIFIED``), for callers that say "unknown" for it."""
    prefix = enum.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
    return {
        value: name.removeprefix(prefix).lower() if lower else name.removeprefix(prefix)
        for name, value in enum.items()
        if value or unset
    }


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def json_option(help_text: str | None = None) -> Decorator:
    """``--json``: print JSON instead of text (the option every reading command has)."""
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def pace_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--rps`` and ``--batch`` of the runs that SCAN the keyspace at a pace (verify, cleanup,
    reverse-copy)."""
    command = click.option("--batch", type=int, default=1000, help="Keys per SCAN batch.")(command)
    return click.option("--rps", type=float, default=0.0, help="Keys per second; 0: unthrottled.")(command)
