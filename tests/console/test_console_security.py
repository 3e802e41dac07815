"""The console's security, against its Starlette app in this process and a real controller.

Each refusal is checked twice: the response says no, and the controller's own RPCs show nothing changed.
"""

from __future__ import annotations

import asyncio
import logging
import re

import grpc
import httpx
import pytest

from relay.console.app import create_app
from relay.console.session import COOKIE_NAME, SessionStore
from relay.core.stages import Stage
from relay.v1 import backfill_pb2, migration_controller_pb2, stage_pb2, verification_pb2
from tests.backfill_support import seed_clean
from tests.conftest import Keys, Running, StartRelay

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


async def _view_key(relay: Running, keys: Keys) -> str:
    reply = await relay.controller.CreateApiKey(
        migration_controller_pb2.CreateApiKeyRequest(scopes=["migration:view"], description="console viewer"),
        metadata=keys.md("admin"),
    )
    return reply.api_key


def _client(app: object, base: str = "http://console.test") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base, follow_redirects=False)


async def _sign_in(client: httpx.AsyncClient, api_key: str) -> httpx.Response:
    form = await client.get("/signin")
    token = TOKEN.search(form.text).group(1)
    return await client.post("/signin", data={"api_key": api_key, "csrf_token": token})


async def _csrf(client: httpx.AsyncClient) -> str:
    page = await client.get("/")
    assert page.status_code == 200
    return TOKEN.search(page.text).group(1)


async def _stage(relay: Running, keys: Keys) -> stage_pb2.StageSetting:
    reply = await relay.controller.GetStage(stage_pb2.GetStageRequest(), metadata=keys.md("admin"))
    return reply.setting


async def _no_backfill(relay: Running, keys: Keys) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await relay.controller.GetBackfill(backfill_pb2.GetBackfillRequest(), metadata=keys.md("admin"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


ACTIONS = [
    ("/stage", {"stage": "DUAL_WRITE"}),
    ("/backfill/start", {"mode": "dry-run"}),
    ("/backfill/pause", {"backfill_id": "bf-20260101-000000-abcdef"}),
    ("/verification/start", {}),
    ("/cleanup/start", {"mode": "dry-run"}),
    ("/reverse-copy/start", {"mode": "dry-run"}),
]


@pytest.fixture
async def relay(start_relay: StartRelay) -> Running:
    return await start_relay(stage=Stage.LEGACY_ONLY, stage_settle_seconds=0.2)


async def test_no_session_sees_only_the_sign_in_page_and_changes_nothing(relay: Running, keys: Keys):
    async with _client(create_app(relay.target)) as client:
        for path in ("/", "/backfill", "/verification", "/cleanup"):
            reply = await client.get(path)
            assert reply.status_code == 303 and reply.headers["location"] == "/signin"
        assert (await client.get("/events/backfill")).status_code == 401
        assert (await client.get("/events/run/verification")).status_code == 401
        for path, form in ACTIONS:
            reply = await client.post(path, data={**form, "csrf_token": "anything"})
            assert reply.status_code == 401, path
    setting = await _stage(relay, keys)
    assert setting.stage == Stage.LEGACY_ONLY and setting.version == 0
    await _no_backfill(relay, keys)


async def test_forged_cookies_are_refused(relay: Running, keys: Keys):
    app = create_app(relay.target)
    async with _client(app) as client:
        await _sign_in(client, keys.raw["admin"])
        real = client.cookies[COOKIE_NAME]
        token = await _csrf(client)
        session_id, _, signature = real.partition(".")
        other_secret = SessionStore(b"another secret").sign(session_id)  # right id, wrong key
        forgeries = [
            "not-a-cookie",
            f"{session_id}.AAAAAA.{'A' * 27}",
            session_id + "x." + signature,  # altered id, old signature
            other_secret,
            app.state.console.sessions.sign("no-such-session"),  # signed, but names no session
        ]
        for forged in forgeries:
            client.cookies.clear()
            client.cookies.set(COOKIE_NAME, forged)
            assert (await client.get("/")).status_code == 303, forged
            for path, form in ACTIONS:
                reply = await client.post(path, data={**form, "csrf_token": token})
                assert reply.status_code == 401, (forged, path)
    setting = await _stage(relay, keys)
    assert setting.stage == Stage.LEGACY_ONLY and setting.version == 0
    await _no_backfill(relay, keys)


async def test_an_expired_session_is_refused(relay: Running, keys: Keys):
    clock = Clock()
    app = create_app(relay.target, session_seconds=600, clock=clock)
    async with _client(app) as client:
        await _sign_in(client, keys.raw["admin"])
        token = await _csrf(client)
        clock.now += 601
        assert (await client.get("/")).status_code == 303
        for path, form in ACTIONS:
            assert (await client.post(path, data={**form, "csrf_token": token})).status_code == 401, path
        # The cookie's own stamp expires too, even if the server still held the session.
        clock.now -= 601
        cookie = client.cookies[COOKIE_NAME]
        clock.now += 10_000
        assert app.state.console.sessions.get(cookie) is None
    setting = await _stage(relay, keys)
    assert setting.stage == Stage.LEGACY_ONLY and setting.version == 0


async def test_a_missing_or_wrong_csrf_token_is_refused(relay: Running, keys: Keys):
    async with _client(create_app(relay.target)) as client:
        await _sign_in(client, keys.raw["admin"])
        token = await _csrf(client)
        for path, form in ACTIONS:
            assert (await client.post(path, data=form)).status_code == 403, path
            wrong = {**form, "csrf_token": token[:-2] + "xx"}
            assert (await client.post(path, data=wrong)).status_code == 403, path
        # Sign-out changes state too.
        assert (await client.post("/signout")).status_code == 403
        assert (await client.get("/")).status_code == 200
        # A cross-site form with the right token is refused by its Origin.
        reply = await client.post(
            "/stage",
            data={"stage": "DUAL_WRITE", "csrf_token": token},
            headers={"origin": "https://evil.example"},
        )
        assert reply.status_code == 403
    setting = await _stage(relay, keys)
    assert setting.stage == Stage.LEGACY_ONLY and setting.version == 0
    await _no_backfill(relay, keys)


async def test_a_view_only_key_sees_everything_and_changes_nothing(relay: Running, keys: Keys):
    view_key = await _view_key(relay, keys)
    async with _client(create_app(relay.target)) as client:
        reply = await _sign_in(client, view_key)
        assert reply.status_code == 303
        for path in ("/", "/backfill", "/verification", "/cleanup"):
            page = await client.get(path)
            assert page.status_code == 200 and "view only" in page.text, path
            assert 'action="/stage"' not in page.text and "Start dry run" not in page.text
        assert "LEGACY_ONLY" in (await client.get("/")).text
        token = await _csrf(client)
        for path, form in ACTIONS:
            reply = await client.post(path, data={**form, "csrf_token": token})
            assert reply.status_code == 403 and "migration:admin" in reply.text, path
    setting = await _stage(relay, keys)
    assert setting.stage == Stage.LEGACY_ONLY and setting.version == 0
    await _no_backfill(relay, keys)


async def test_the_controller_itself_refuses_a_view_only_key_any_change(relay: Running, keys: Keys):
    """The console's check is not the only one: migration:view reaches read-only RPCs alone."""
    md = (("authorization", f"Bearer {await _view_key(relay, keys)}"),)
    c = relay.controller
    assert (await c.GetStage(stage_pb2.GetStageRequest(), metadata=md)).setting.stage == Stage.LEGACY_ONLY
    for call in (
        c.GetBackfill(backfill_pb2.GetBackfillRequest(), metadata=md),
        c.GetVerification(verification_pb2.GetVerificationRequest(), metadata=md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND  # allowed, and nothing there yet
    refused = [
        c.SetStage(stage_pb2.SetStageRequest(stage=stage_pb2.STAGE_DUAL_WRITE), metadata=md),
        c.PauseBackfill(backfill_pb2.PauseBackfillRequest(backfill_id="bf-x"), metadata=md),
        c.UpdateBackfill(backfill_pb2.UpdateBackfillRequest(), metadata=md),
        c.CreateApiKey(migration_controller_pb2.CreateApiKeyRequest(scopes=["migration:admin"]), metadata=md),
    ]
    for call in refused:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    for stream in (
        c.StartBackfill(backfill_pb2.StartBackfillRequest(dry_run=True), metadata=md),
        c.VerifyMigration(verification_pb2.VerifyMigrationRequest(), metadata=md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stream:
                pass
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    await _no_backfill(relay, keys)
    assert (await _stage(relay, keys)).version == 0


async def test_sign_in_refuses_bad_keys_and_never_shows_or_logs_a_key(
    relay: Running, keys: Keys, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    async with _client(create_app(relay.target)) as client:
        for bad in ("rk_not-a-key", keys.raw["ws_a"]):  # unknown; a key without a migration scope
            reply = await _sign_in(client, bad)
            assert reply.status_code == 401 and COOKIE_NAME not in reply.cookies
            assert bad not in reply.text
        form = await client.get("/signin")
        stale = await client.post("/signin", data={"api_key": keys.raw["admin"], "csrf_token": "x"})
        assert stale.status_code == 403 and COOKIE_NAME not in stale.cookies
        assert TOKEN.search(form.text)
        reply = await _sign_in(client, keys.raw["admin"])
        assert reply.status_code == 303
        cookie = reply.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=" in cookie
        assert "Secure" not in cookie  # plain http here; see the https test below
        assert keys.raw["admin"] not in cookie
        bodies = [(await client.get(p)).text for p in ("/", "/backfill", "/verification", "/cleanup")]
        assert all(keys.raw["admin"] not in body for body in bodies)
        token = TOKEN.search(bodies[0]).group(1)
        reply = await client.post("/stage", data={"stage": "DUAL_WRITE", "csrf_token": token})
        assert reply.status_code == 303
        old_cookie = client.cookies[COOKIE_NAME]
        assert (await client.post("/signout", data={"csrf_token": token})).status_code == 303
        client.cookies.set(COOKIE_NAME, old_cookie)
        assert (await client.get("/")).status_code == 303  # a signed-out session is gone
    assert (await _stage(relay, keys)).stage == Stage.DUAL_WRITE
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert keys.raw["admin"] not in logged and keys.raw["ws_a"] not in logged
    actions = [r.getMessage() for r in caplog.records if r.name == "relay.console"]
    assert any("signed in" in m and "sha256:" in m for m in actions)
    assert any("set stage DUAL_WRITE of global default: LEGACY_ONLY -> DUAL_WRITE" in m for m in actions)


async def test_the_cookie_is_secure_over_https(relay: Running, keys: Keys):
    async with _client(create_app(relay.target), base="https://console.test") as client:
        reply = await _sign_in(client, keys.raw["admin"])
        assert reply.status_code == 303 and "Secure" in reply.headers["set-cookie"]


async def test_a_refused_stage_change_shows_the_rule_in_the_controllers_words(relay: Running, keys: Keys):
    async with _client(create_app(relay.target)) as client:
        await _sign_in(client, keys.raw["admin"])
        token = await _csrf(client)
        await client.post("/stage", data={"stage": "DUAL_WRITE", "csrf_token": token})
        reply = await client.post("/stage", data={"stage": "READ_NEW", "csrf_token": token})
        assert reply.status_code == 303
        page = (await client.get("/")).text
    assert "FAILED_PRECONDITION [BACKFILL_REQUIRED]" in page
    assert "relayctl backfill start --execute" in page
    assert (await _stage(relay, keys)).stage == Stage.DUAL_WRITE


async def test_text_from_a_request_is_escaped_on_the_page(relay: Running, keys: Keys):
    async with _client(create_app(relay.target)) as client:
        await _sign_in(client, keys.raw["admin"])
        page = (await client.get("/", params={"workspace": "<script>alert(1)</script>"})).text
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page


async def test_every_response_carries_the_security_headers(relay: Running):
    async with _client(create_app(relay.target)) as client:
        for path in ("/signin", "/", "/static/console.js"):
            headers = (await client.get(path)).headers
            assert "frame-ancestors 'none'" in headers["content-security-policy"], path
            assert "script-src 'self'" in headers["content-security-policy"]
            assert headers["x-frame-options"] == "DENY"
            assert headers["cache-control"] == ("no-cache" if path.startswith("/static/") else "no-store")


async def test_an_admin_starts_slows_and_cancels_a_backfill_from_the_console(
    relay: Running, keys: Keys, redis: object
):
    await seed_clean(redis, 400)
    async with _client(create_app(relay.target)) as client:
        await _sign_in(client, keys.raw["admin"])
        token = await _csrf(client)
        form = {"mode": "execute", "rps": "50", "batch": "10", "csrf_token": token}
        assert (await client.post("/backfill/start", data=form)).status_code == 303
        b = await relay.controller.GetBackfill(backfill_pb2.GetBackfillRequest(), metadata=keys.md("admin"))
        assert b.state == backfill_pb2.BACKFILL_STATE_RUNNING and b.options.rate_limit == 50
        rate = {"backfill_id": b.backfill_id, "rps": "25", "csrf_token": token}
        assert (await client.post("/backfill/rate", data=rate)).status_code == 303
        cancel = {"backfill_id": b.backfill_id, "csrf_token": token}
        assert (await client.post("/backfill/cancel", data=cancel)).status_code == 303
        page = (await client.get("/backfill")).text
    assert b.backfill_id in page and "cancelled" in page
    async with asyncio.timeout(15):  # it stops after its current batch: follow it there
        watch = relay.controller.WatchBackfill(
            backfill_pb2.WatchBackfillRequest(backfill_id=b.backfill_id), metadata=keys.md("admin")
        )
        async for event in watch:
            if event.backfill.state == backfill_pb2.BACKFILL_STATE_CANCELLED:
                break
    assert event.backfill.options.rate_limit == 25
    assert event.backfill.progress.scanned < 400
