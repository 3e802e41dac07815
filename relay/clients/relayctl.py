"""relayctl: the operator's and developer's command line for Relay.

Each command group lives in its own module and is registered in COMMAND_GROUPS.
"""

from __future__ import annotations

import click

from relay.clients.cli_backfill import backfill
from relay.clients.cli_cleanup import cleanup, reverse_copy
from relay.clients.cli_jobs import jobs
from relay.clients.cli_keys import keys
from relay.clients.cli_stage import stage
from relay.clients.cli_verify import verify
from relay.clients.connection import Connection
from relay.core.tls import TLSConfigError

COMMAND_GROUPS: list[click.Command] = [jobs, keys, stage, backfill, verify, cleanup, reverse_copy]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--target",
    envvar="RELAY_TARGET",
    default=None,
    help="host:port of Relay (default: saved, else 127.0.0.1:50051)",
)
@click.option("--api-key", envvar="RELAY_API_KEY", default=None, help="default: the key relay serve saved")
@click.option(
    "--tls/--no-tls",
    "tls",
    default=None,
    help="TLS with the system's roots (implied by --tls-ca/--tls-cert/--tls-key; default: saved)",
)
@click.option("--tls-ca", envvar="RELAY_TLS_CA", default=None, help="PEM CA that signed the server's cert")
@click.option("--tls-cert", envvar="RELAY_TLS_CERT", default=None, help="PEM client certificate (mTLS)")
@click.option("--tls-key", envvar="RELAY_TLS_KEY", default=None, help="PEM key of the client certificate")
@click.option(
    "--tls-server-name",
    envvar="RELAY_TLS_SERVER_NAME",
    default=None,
    help="the name to check the server's certificate against, when the target is not in it",
)
@click.pass_context
def cli(
    ctx: click.Context,
    target: str | None,
    api_key: str | None,
    tls: bool | None,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_server_name: str | None,
) -> None:
    """Talk to Relay's JobService and MigrationController."""
    conn = Connection.resolve(
        target,
        api_key,
        tls=tls,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_server_name=tls_server_name,
    )
    if conn.tls.enabled:
        try:
            conn.tls.credentials()  # unreadable files are a usage error now, not a traceback later
        except TLSConfigError as exc:
            raise click.UsageError(str(exc)) from None
    ctx.obj = conn


for group in COMMAND_GROUPS:
    cli.add_command(group)


def main() -> None:
    cli(prog_name="relayctl")
