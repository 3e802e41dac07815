"""Relay as others install it: a wheel built by pip, and an editable install, each with its stubs.

The wheel goes into a fresh virtual environment outside the checkout (no system site-packages; pip
fetches the dependencies, from its cache when it has them), where ``relay serve`` runs on the embedded
store and ``relayctl jobs execute`` / ``jobs get`` talk to it. No ``make gen`` is involved: the stubs
come from setup.py's build hook.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.ports import free_port

REPO = Path(__file__).resolve().parent.parent
STUBS = ("backfill", "cleanup", "job_service", "migration_controller", "stage", "verification")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, **extra}


def _run(args: list[str], cwd: Path, timeout: float = 480, **env: str) -> str:
    done = subprocess.run(
        args, cwd=cwd, env=_clean_env(**env), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _venv(path: Path) -> Path:
    _run([sys.executable, "-m", "venv", str(path)], cwd=path.parent)
    return path / "bin"


def _source_copy(dest: Path) -> Path:
    """The checkout's tracked files only (no generated stubs, no .venv), as a fresh clone has them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=False, timeout=60
    ).stdout
    names = [n for n in listed.decode().split("\0") if n]
    if not names:  # not a git checkout: copy the tree without what building or testing leaves behind
        shutil.copytree(
            REPO,
            dest,
            ignore=shutil.ignore_patterns(
                ".venv", "node_modules", ".git", "build", "*.egg-info", "*_pb2*.py*", "__pycache__"
            ),
        )
        return dest
    for name in names:
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _wait_for_port(port: int, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"relay serve exited {proc.returncode}: {err}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("relay serve did not listen in time")


def test_a_wheel_in_a_fresh_venv_serves_and_relayctl_executes(tmp_path: Path):
    source = _source_copy(tmp_path / "src")
    assert not list((source / "relay" / "v1").glob("*_pb2*.py")), "the copy must start without stubs"
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", str(source), "-w", str(wheels), "--no-deps", "-q"], cwd=tmp_path)
    (wheel,) = wheels.glob("relay-*.whl")

    bin_dir = _venv(tmp_path / "venv")
    _run([str(bin_dir / "pip"), "install", "-q", str(wheel)], cwd=tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    # Import from the venv, run from a directory with no relay/ in it: the installed package answers.
    where = _run(
        [
            str(bin_dir / "python"),
            "-c",
            "import relay, relay.v1.job_service_pb2_grpc as g, relay.v1.stage_pb2;"
            + "".join(f"import relay.v1.{name}_pb2, relay.v1.{name}_pb2_grpc;" for name in STUBS)
            + "print(relay.__file__); print(g.JobServiceStub.__name__)",
        ],
        cwd=home,
    )
    assert str(tmp_path / "venv") in where and "JobServiceStub" in where

    port = free_port()
    env = {
        "REDIS_URL": "",
        "RELAY_LISTEN": f"127.0.0.1:{port}",
        "RELAY_METRICS_LISTEN": "",
        "RELAY_CREDENTIALS": str(home / "credentials.json"),
        "HOME": str(home),
    }
    proc = subprocess.Popen(
        [str(bin_dir / "relay"), "serve"],
        cwd=home,
        env=_clean_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_port(port, proc)
        for _ in range(100):  # the dev key is saved right after the port opens
            if (home / "credentials.json").exists():
                break
            time.sleep(0.05)
        out = _run(
            [str(bin_dir / "relayctl"), "jobs", "execute", "--provider", "p", "--action", "a"],
            cwd=home,
            timeout=60,
            **env,
        )
        job_id = out.split("job_id:")[1].split()[0]
        got = _run([str(bin_dir / "relayctl"), "jobs", "get", job_id], cwd=home, timeout=60, **env)
        assert job_id in got and '"workspace_id": "dev"' in got
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_an_editable_install_generates_the_stubs_into_the_source_tree(tmp_path: Path):
    source = _source_copy(tmp_path / "src")
    bin_dir = _venv(tmp_path / "venv")
    # --no-deps keeps it quick: what is under test is the build hook, the wheel test covers the rest.
    _run([str(bin_dir / "pip"), "install", "-q", "--no-deps", "-e", str(source)], cwd=tmp_path)
    for name in STUBS:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert (source / "relay" / "v1" / f"{name}{suffix}").is_file(), f"{name}{suffix}"
    # The editable venv resolves relay to the copy's source tree.
    spec = _run(
        [str(bin_dir / "python"), "-c", "import importlib.util as u; print(u.find_spec('relay').origin)"],
        cwd=tmp_path,
    )
    assert spec.strip() == str(source / "relay" / "__init__.py")
