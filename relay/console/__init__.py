"""The migration console: a small web app served beside the controller (RELAY_CONSOLE_LISTEN).

It talks to the controller only through its gRPC API (relay.v1.MigrationController), with the signed-in
user's api key on every call, and never to Redis. ``app`` builds the Starlette app, ``server`` runs it
under uvicorn inside ``relay serve``.
"""
