"""The console inside ``relay serve``: its setting, its address, and a taken port."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import pytest

from relay.console.server import controller_target, split_listen, start_console
from relay.core.config import Settings
from tests.conftest import free_port


def test_the_console_listens_on_8080_by_default_and_empty_turns_it_off():
    assert Settings.from_env({}).console_listen == "127.0.0.1:8080"
    assert Settings.from_env({"RELAY_CONSOLE_LISTEN": ""}).console_listen == ""
    assert Settings.from_env({"RELAY_CONSOLE_LISTEN": "0.0.0.0:9000"}).console_listen == "0.0.0.0:9000"


def test_addresses():
    assert split_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert split_listen("[::1]:8080") == ("::1", 8080)
    assert controller_target("0.0.0.0:50051", 50051) == "127.0.0.1:50051"
    assert controller_target("[::]:0", 4242) == "127.0.0.1:4242"
    assert controller_target("10.1.2.3:50051", 50051) == "10.1.2.3:50051"


async def test_off_when_empty():
    assert await start_console(Settings.from_env({}, console_listen=""), 1) is None


async def test_serves_then_stops_and_a_taken_port_leaves_the_controller_running(
    caplog: pytest.LogCaptureFixture,
):
    port = free_port()
    console = await start_console(Settings.from_env({}, console_listen=f"127.0.0.1:{port}"), 1)
    assert console is not None and console.port == port
    try:

        def fetch() -> int:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/signin", timeout=5) as reply:
                return reply.status

        assert await asyncio.to_thread(fetch) == 200
        second = await start_console(Settings.from_env({}, console_listen=f"127.0.0.1:{port}"), 1)
        assert second is None
        assert "cannot listen" in caplog.text
    finally:
        await console.stop()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # released (a listener would still refuse this)
        s.listen(1)
