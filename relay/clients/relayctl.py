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

COMMAND_GROUPS: list[click.Command] = [jobs, keys, stage, backfill, verify, cleanup, reverse_copy]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--target",
    envvar="RELAY_TARGET",
    default=None,
    help="host:port of Relay (default: saved, else 127.0.0.1:50051)",
)
@click.option("--api-key", envvar="RELAY_API_KEY", default=None, help="default: the key relay serve saved")
@click.pass_context
def cli(ctx: click.Context, target: str | None, api_key: str | None) -> None:
    """Talk to Relay's JobService and MigrationController."""
    ctx.obj = Connection.resolve(target, api_key)


for group in COMMAND_GROUPS:
    cli.add_command(group)


def main() -> None:
    cli(prog_name="relayctl")
