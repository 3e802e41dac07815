"""Prometheus' binaries for the ops tests: found on PATH, else installed once by ops/ensure-prometheus.sh
(Debian's ``prometheus`` package; `make lint` runs the same script). A test is skipped only when they
can be neither found nor installed, and says why."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest

ENSURE = Path(__file__).resolve().parent.parent / "ops" / "ensure-prometheus.sh"


@functools.cache
def _install() -> str:
    """'' when both binaries are on PATH (installing them if needed), else why they are not."""
    if shutil.which("prometheus") and shutil.which("promtool"):
        return ""
    result = subprocess.run(["bash", str(ENSURE)], capture_output=True, text=True, timeout=600)
    if result.returncode == 0 and shutil.which("prometheus") and shutil.which("promtool"):
        return ""
    said = (result.stderr or result.stdout).strip()[-300:]
    return f"prometheus cannot be installed here ({ENSURE.name}: {said})"


def _binary(name: str) -> str:
    problem = _install()
    if problem:
        pytest.skip(problem)
    path = shutil.which(name)
    assert path is not None
    return path


def promtool() -> str:
    return _binary("promtool")


def prometheus() -> str:
    return _binary("prometheus")
