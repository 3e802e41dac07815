"""The stub generator's pin and the runtime ranges agree: generated code never newer than its runtime.

grpcio-tools writes protobuf gencode that refuses a protobuf runtime older than the generator's (or of
another major), and ``*_pb2_grpc.py`` that refuse a grpcio older than the generator. The package's
ranges must start at those versions, and ``make gen`` must use the same generator as the build hook.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent


def _requirements(items: list[str]) -> dict[str, Requirement]:
    return {(r := Requirement(item)).name: r for item in items}


def test_the_runtime_ranges_start_at_the_pinned_generators_versions():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    build = _requirements(project["build-system"]["requires"])
    runtime = _requirements(project["project"]["dependencies"])
    dev = _requirements(project["project"]["optional-dependencies"]["dev"])

    (pin,) = build["grpcio-tools"].specifier
    assert pin.operator == "==", "the generator is pinned exactly"
    assert str(dev["grpcio-tools"].specifier) == str(build["grpcio-tools"].specifier), (
        "make gen uses the same"
    )

    stub = (REPO / "relay" / "v1" / "job_service_pb2.py").read_text()
    grpc_stub = (REPO / "relay" / "v1" / "job_service_pb2_grpc.py").read_text()
    gencode = Version(re.search(r"Protobuf Python Version: ([0-9.]+)", stub).group(1))  # type: ignore[union-attr]
    grpc_gen = Version(re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", grpc_stub).group(1))  # type: ignore[union-attr]
    assert grpc_gen == Version(pin.version), "the stubs in the tree come from the pinned generator"

    protobuf = runtime["protobuf"].specifier
    assert gencode in protobuf, "the gencode's own runtime is allowed"
    assert Version(f"{gencode.major + 1}.0.0") not in protobuf, "no runtime of the next major"
    lowest = min(Version(s.version) for s in protobuf if s.operator == ">=")
    assert lowest >= gencode, "no runtime older than the gencode"

    for name in ("grpcio", "grpcio-health-checking", "grpcio-reflection", "grpcio-status"):
        lows = [Version(s.version) for s in runtime[name].specifier if s.operator == ">="]
        assert lows and min(lows) >= grpc_gen, name
