"""The console in a real browser: headless Chromium (Debian's package) driven by Playwright, against
``relay serve`` on a private redis-server seeded as the old system left it.

The walk an operator makes: sign in by keyboard, see the stage, a backfill dry run with the right counts,
an execute whose bar moves, paused and resumed and sped up, a stage change refused with the rule's reason,
a clean verification, a cleanup refused before its stage, a read-only viewer, sign out. Every wait is for
a condition on the page. It writes the screenshots in docs/console/ that the README shows.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis as sync_redis

from bench.server_proc import ServerProcess, relay_serve_argv, start_server
from relay.clients.cli_backfill import summary as relayctl_summary
from relay.v1 import backfill_pb2, migration_controller_pb2_grpc
from tests.conftest import free_port, start_redis_server

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The README's screenshots are rewritten only when asked (RELAY_UPDATE_SCREENSHOTS=1), so that a test run
# leaves the checkout as it found it; otherwise they go to a scratch folder, taken all the same.
SHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "console"
    if os.environ.get("RELAY_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "relay-console-screenshots"
)
WORKSPACES = ("acme", "globex", "initech")
VALID = 600
WAIT_MS = 30_000

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make system-tools)"
    ),
    pytest.mark.timeout(120),
]


@dataclass
class Served:
    url: str
    target: str
    admin_key: str
    view_key: str
    process: ServerProcess


def _seed(port: int) -> None:
    client = sync_redis.Redis(port=port)
    pipe = client.pipeline(transaction=False)
    for n in range(VALID):
        job_id = str(uuid.UUID(int=n + 1, version=4))
        pipe.hset(
            f"ai:jobs:{job_id}",
            mapping={
                "job_id": job_id,
                "status": "completed" if n % 2 else "failed",
                "action_provider": "openai",
                "action_name": "chat",
                "params": json.dumps({"prompt": "hi"}),
                "workspace_id": WORKSPACES[n % 3],
                "actor_id": "u1",
                "result": "",
                "enqueued_at": f"2025-10-{1 + n % 28:02d}T12:00:00",
            },
        )
    pipe.hset("ai:jobs:broken-1", mapping={"job_id": "broken-1", "status": "failed"})  # no workspace_id
    pipe.set("ai:jobs:not-a-hash", "oops")
    pipe.execute()
    client.close()


def _wait_http(url: str, process: ServerProcess) -> None:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise RuntimeError(process.log_path.read_text()[-2000:])
        try:
            with urllib.request.urlopen(url + "/signin", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)  # a poll on a condition, with its deadline above
    raise RuntimeError("the console did not answer")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("console")
    redis_srv = start_redis_server()
    _seed(redis_srv.port)
    admin_key, view_key = f"console-admin-{uuid.uuid4().hex}", f"console-view-{uuid.uuid4().hex}"
    keys = work / "keys.json"
    keys.write_text(
        json.dumps(
            [
                {"key": admin_key, "workspace_id": "", "scopes": ["migration:admin"]},
                {"key": view_key, "workspace_id": "", "scopes": ["migration:view"]},
            ]
        )
    )
    grpc_port, console_port = free_port(), free_port()
    env = {
        "REDIS_URL": redis_srv.url,
        "RELAY_LISTEN": f"127.0.0.1:{grpc_port}",
        "RELAY_METRICS_LISTEN": "",
        "RELAY_CONSOLE_LISTEN": f"127.0.0.1:{console_port}",
        "RELAY_API_KEYS_FILE": str(keys),
        "AI_JOBS_NEW_SCHEMA": "off",
        "XDG_CONFIG_HOME": str(work / "cfg"),
        "RELAY_LOG_FORMAT": "json",
    }
    process = start_server("relay-console", relay_serve_argv("all"), env, f"127.0.0.1:{grpc_port}", work)
    url = f"http://127.0.0.1:{console_port}"
    try:
        _wait_http(url, process)
        yield Served(url, f"127.0.0.1:{grpc_port}", admin_key, view_key, process)
    finally:
        process.stop()
        redis_srv.stop()


@pytest.fixture
async def browser(served: Served) -> AsyncIterator[object]:
    async with playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def _shot(page: object, name: str) -> None:
    """A screenshot for the README, once the page is known to fit its window's width."""
    await page.wait_for_load_state("load")  # type: ignore[attr-defined]  # its stylesheet applied
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")  # type: ignore[attr-defined]
    wide = await page.evaluate(  # type: ignore[attr-defined]
        "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > "
        "window.innerWidth + 1).slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + "
        "e.getBoundingClientRect().width)"
    )
    assert overflow <= 0, (name, overflow, wide)
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


async def _relayctl_summary(served: Served) -> str:
    async with grpc.aio.insecure_channel(served.target) as channel:
        stub = migration_controller_pb2_grpc.MigrationControllerStub(channel)
        b = await stub.GetBackfill(
            backfill_pb2.GetBackfillRequest(), metadata=(("authorization", f"Bearer {served.admin_key}"),)
        )
    return relayctl_summary(backfill_pb2.BackfillEvent(backfill=b, reason=b.reason)).strip("\n")


async def _sign_in_by_keyboard(page: object, served: Served, key: str) -> None:
    await page.goto(served.url + "/")  # type: ignore[attr-defined]
    await expect(page).to_have_url(served.url + "/signin")
    field = page.get_by_label("Api key")  # type: ignore[attr-defined]
    await expect(field).to_be_focused()  # autofocus: type straight away
    await page.keyboard.type(key)  # type: ignore[attr-defined]
    await page.keyboard.press("Enter")  # type: ignore[attr-defined]
    await expect(page).to_have_url(served.url + "/")


async def test_an_operator_walks_the_migration_in_the_console(served: Served, browser: object):
    context = await browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    dialogs: list[str] = []

    async def accept(dialog: object) -> None:
        dialogs.append(dialog.message)  # type: ignore[attr-defined]
        await dialog.accept()  # type: ignore[attr-defined]

    page.on("dialog", accept)
    await page.goto(served.url + "/signin")
    await _shot(page, "signin")

    # Sign in by keyboard and see the stage.
    await _sign_in_by_keyboard(page, served, served.admin_key)
    global_row = page.locator("#scope-global")
    await expect(global_row.locator(".stage")).to_have_text("LEGACY_ONLY")
    await expect(global_row).to_contain_text("legacy")
    await expect(page.get_by_text("admin", exact=True)).to_be_visible()

    # A dry run, finished with the right counts: the summary relayctl prints.
    await page.get_by_role("link", name="Backfill").click()
    await page.get_by_role("button", name="Start dry run").click()
    summary = page.locator("pre.summary")
    await expect(summary).to_contain_text("Dry run: counted, nothing was written.")
    text = await summary.inner_text()
    assert re.search(r"Scanned:\s+602\b", text) and re.search(r"Migrated:\s+600\b", text), text
    assert re.search(r"invalid:\s+2\b", text) and "broken-1" in text and "not-a-hash" in text
    assert text == await _relayctl_summary(served)

    # A canary workspace first (an override), then the global default to dual-write, then a step the
    # rules refuse, with their reason on the page.
    await page.get_by_role("link", name="Overview").click()
    await page.get_by_label("Workspace (empty: global default)").fill("acme")
    await page.get_by_label("Stage", exact=True).select_option("DUAL_WRITE")
    await page.get_by_role("button", name="Change stage").click()
    await expect(page.locator(".flash-ok")).to_contain_text("workspace acme: LEGACY_ONLY -> DUAL_WRITE")
    await expect(page.locator("#scope-acme .stage")).to_have_text("DUAL_WRITE")
    await page.get_by_role("button", name="Move global default to DUAL_WRITE").click()
    await expect(page.locator(".flash-ok")).to_contain_text("global default: LEGACY_ONLY -> DUAL_WRITE")
    await expect(global_row.locator(".stage")).to_have_text("DUAL_WRITE")
    await page.get_by_role("button", name="Move global default to READ_NEW").click()
    refusal = page.locator("#refusal-global")
    await expect(refusal).to_contain_text("FAILED_PRECONDITION [BACKFILL_REQUIRED]")
    await expect(refusal).to_contain_text("Run `relayctl backfill start --execute` and retry")
    await expect(page.locator(".flash-error")).to_contain_text("refused")
    await expect(global_row.locator(".stage")).to_have_text("DUAL_WRITE")
    await _shot(page, "overview")

    # An execute at a low rate: the bar moves; pause, resume, then lift the limit.
    await page.get_by_role("link", name="Backfill").click()
    await page.get_by_label("Rate limit (keys/s, 0 unthrottled)").fill("120")
    await page.get_by_label("Batch size (0: 1000)").fill("20")
    await page.get_by_role("button", name="Start execute").click()
    bar = page.get_by_role("progressbar", name="Backfill progress")
    body = page.locator("body")  # data-state: the state the server rendered (live updates leave it)
    await expect(body).to_have_attribute("data-state", "RUNNING")
    await page.wait_for_function("() => document.getElementById('bf-bar').value > 0")
    first = float(await bar.get_attribute("value") or 0)
    await page.wait_for_function(f"() => document.getElementById('bf-bar').value > {first}")
    await page.get_by_role("button", name="Pause").click()
    await expect(body).to_have_attribute("data-state", "PAUSED")
    await expect(page.locator("h2 [data-field=state]")).to_have_text("PAUSED")
    await expect(page.get_by_role("button", name="Resume")).to_be_enabled()
    await expect(page.get_by_role("button", name="Pause")).to_be_disabled()
    await page.get_by_role("button", name="Resume").click()
    await expect(body).to_have_attribute("data-state", "RUNNING")
    await expect(body).to_have_attribute("data-live", re.compile(r"^([2-9]|\d{2,})$"))  # live updates
    await _shot(page, "backfill-running")
    await page.get_by_label("New rate (keys/s, 0 unthrottled)").fill("0")
    await page.get_by_role("button", name="Set rate").click()
    await expect(summary).to_contain_text("completed", timeout=WAIT_MS)
    text = await summary.inner_text()
    assert re.search(r"Migrated:\s+600\b", text) and "Dry run" not in text, text
    assert await page.locator("#rate-line").get_attribute("points")
    await _shot(page, "backfill")

    # A verification, clean, with its per-workspace table.
    await page.get_by_role("link", name="Verification").click()
    await page.get_by_role("button", name="Run verification").click()
    # Its button comes back once the page is rendered with the finished run (no live stream left).
    await expect(page.get_by_role("button", name="Run verification")).to_be_visible()
    await expect(page.locator("h2 [data-field=result]")).to_have_text("CLEAN")
    rows = page.locator("#verification-table tbody tr")
    await expect(rows).to_have_count(3)
    for n, workspace in enumerate(WORKSPACES):
        cells = await rows.nth(n).locator("th, td").all_inner_texts()
        assert cells[:7] == [workspace, "200", "0", "0", "0", "0", "0"], cells
    await _shot(page, "verification")

    # Cleanup: a dry run counts; an execute is refused before NEW_ONLY, and the page says why.
    await page.get_by_role("link", name="Cleanup & reverse copy").click()
    await page.locator("#cleanup-dry-run").click()
    cleanup_summary = page.locator("#cleanup pre.summary")
    await expect(cleanup_summary).to_contain_text("(dry run): completed")
    await expect(page.locator("#cleanup-dry-run")).to_be_visible()  # rendered once it has finished
    assert re.search(r"Would delete:\s+600\b", await cleanup_summary.inner_text())
    await page.locator("#cleanup-execute").click()  # its confirmation dialog is accepted
    await expect(page.locator(".flash-error")).to_contain_text("FAILED_PRECONDITION [STAGE_NOT_NEW_ONLY]")
    await expect(cleanup_summary).to_contain_text("(dry run): completed")  # the last run stays shown
    await page.locator("#reverse-copy-dry-run").click()
    await expect(page.locator("#reverse-copy pre.summary")).to_contain_text("(dry run): completed")
    await expect(page.locator("#reverse-copy-dry-run")).to_be_visible()
    await _shot(page, "cleanup")
    assert any("deletes legacy keys" in d for d in dialogs), dialogs

    # Phone-sized: every page fits the screen's width (no sideways scrolling of the page itself).
    await page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/cleanup", "/verification", "/backfill", "/"):
        await page.goto(served.url + path)
        await _shot(page, "phone-" + path.strip("/") if path != "/" else "overview-phone")
    await expect(global_row.locator(".stage")).to_have_text("DUAL_WRITE")
    await expect(page.locator("section[aria-labelledby=last-title]")).to_contain_text("COMPLETED")
    await _shot(page, "overview-phone")

    # Sign out: the pages are closed again.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(served.url + "/signin")
    await page.goto(served.url + "/backfill")
    await expect(page).to_have_url(served.url + "/signin")
    await context.close()

    log = served.process.log_path.read_text()
    assert served.admin_key not in log
    actions = [json.loads(line)["message"] for line in log.splitlines() if '"relay.console"' in line]
    for what in ("signed in", "started backfill", "paused backfill", "resumed backfill", "set the rate"):
        assert any(what in m and "sha256:" in m for m in actions), (what, actions)


async def test_a_viewer_sees_the_pages_without_any_control(served: Served, browser: object):
    context = await browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    await _sign_in_by_keyboard(page, served, served.view_key)
    await expect(page.get_by_text("view only", exact=True)).to_be_visible()
    await expect(page.locator("#scope-global .stage")).not_to_have_text("")
    for link in ("Overview", "Backfill", "Verification", "Cleanup & reverse copy"):
        await page.get_by_role("link", name=link).click()
        await expect(page.locator("main h1")).to_be_visible()
        assert await page.locator("main form[method=post]").count() == 0
    await context.close()
