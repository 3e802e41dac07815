"""Readable log lines for a person at a terminal; JSON for everything else, as before."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.ports import free_port
from relay.core import logs


def _serve_on_a_terminal(tmp_path: Path, **env: str) -> str:
    """``relay serve`` with stderr on a pseudo-terminal; what it printed up to "listening"."""
    master, slave = pty.openpty()
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "OTEL_"))},
        "REDIS_URL": "",
        "RELAY_LISTEN": f"127.0.0.1:{free_port()}",
        "RELAY_METRICS_LISTEN": "",
        "RELAY_CREDENTIALS": str(tmp_path / "credentials.json"),
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", "from relay.server import main; main()", "serve"],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        stdin=subprocess.DEVNULL,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    try:
        while b"listening on" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        os.close(master)
    return seen.decode(errors="replace")


def test_a_terminal_gets_readable_lines(tmp_path: Path):
    out = _serve_on_a_terminal(tmp_path)
    lines = [line for line in out.splitlines() if "relay.server" in line]
    assert lines, out
    line = next(line for line in lines if "listening" in line)
    assert not line.lstrip().startswith("{"), line
    assert "INFO" in line and "relay all listening (plaintext)" in line and "listen=127.0.0.1:" in line
    assert "REDIS_URL is not set" in out  # the embedded-store warning, readable too


def test_a_terminal_still_gets_json_when_asked(tmp_path: Path):
    out = _serve_on_a_terminal(tmp_path, RELAY_LOG_FORMAT="json")
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(r["logger"] == "relay.server" and "listening" in r["message"] for r in records), out


def test_auto_is_json_off_a_terminal_and_text_on_one():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert logs.resolve_format("auto", io.StringIO()) == "json"
    assert logs.resolve_format("", Tty()) == "text"
    assert logs.resolve_format("json", Tty()) == "json"
    assert logs.resolve_format("text", io.StringIO()) == "text"


def test_the_console_format_keeps_only_the_allowed_fields():
    record = logging.LogRecord("relay.x", logging.WARNING, __file__, 1, "copied %s", ("it",), None)
    record.job_id = "j-1"
    record.params = {"prompt": "SECRET"}  # not an allowed field: never printed
    token = logs.request_id.set("req-9")
    try:
        line = logs.ConsoleFormatter().format(record)
    finally:
        logs.request_id.reset(token)
    assert "WARNING" in line and "relay.x: copied it" in line
    assert "job_id=j-1" in line and "request_id=req-9" in line
    assert "SECRET" not in line and "params" not in line
