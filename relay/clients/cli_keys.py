"""relayctl keys create | revoke (api keys stored in Redis; needs a migration:admin key)."""

from __future__ import annotations

import click

from relay.clients.cli_common import call, run
from relay.core.auth import ALL_SCOPES
from relay.v1 import migration_controller_pb2 as pb


@click.group("keys", help="Create and revoke api keys stored in Redis.")
def keys() -> None:
    pass


@keys.command("create", help="Create a key; it is printed once and only its digest is stored.")
@click.option("--workspace", default="", help="Required for actions:* scopes.")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(ALL_SCOPES))
@click.option("--description", default="")
@run
async def create(ctx: click.Context, workspace: str, scopes: tuple[str, ...], description: str) -> int:
    request = pb.CreateApiKeyRequest(workspace_id=workspace, scopes=list(scopes), description=description)
    reply = await call(ctx, "CreateApiKey", request)
    click.echo(f"api_key: {reply.api_key}\ndigest:  {reply.key_digest}")
    return 0


@keys.command("revoke", help="Revoke a key by its digest (sha256:<hex>).")
@click.argument("digest")
@run
async def revoke(ctx: click.Context, digest: str) -> int:
    reply = await call(ctx, "RevokeApiKey", pb.RevokeApiKeyRequest(key_digest=digest))
    click.echo("revoked" if reply.revoked else "no such key")
    return 0 if reply.revoked else 3
