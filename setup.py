"""The build hook that puts the gRPC stubs (``relay/v1/*_pb2*.py``) into every install.

The stubs are generated from ``protos/`` by grpc_tools' protoc at build time, never committed. The
generator is pinned in ``[build-system] requires`` (pyproject.toml) and the protobuf/grpcio runtime the
package allows starts at that generator's versions, so installed stubs are never newer than their runtime.

- ``pip wheel .`` / ``pip install .``: generated into the build directory, so they land in the wheel.
- ``pip install -e .``: generated into the source tree (``relay/v1/``), where the editable install
  imports them from.

Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import glob
import os
from importlib import resources

from setuptools import Command, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "protos")


def generate_stubs(out_dir: str) -> list[str]:
    """Run protoc on every ``protos/relay/v1/*.proto`` into ``out_dir``; returns the proto files."""
    from grpc_tools import protoc  # a build requirement: imported only when building

    protos = sorted(glob.glob(os.path.join(PROTO_ROOT, "relay", "v1", "*.proto")))
    if not protos:
        raise RuntimeError(f"no .proto files under {PROTO_ROOT}: is this a complete source tree?")
    os.makedirs(os.path.join(out_dir, "relay", "v1"), exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("grpc_tools.protoc failed to generate the relay.v1 stubs")
    return protos


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        super().run()
        # Editable installs import from the source tree; a wheel takes what is in build_lib.
        generate_stubs(HERE if self.editable_mode else self.build_lib)


class GenStubs(Command):
    """``python setup.py gen_stubs``: the stubs into the source tree (what ``make gen`` does)."""

    description = "generate relay/v1 gRPC stubs from protos/ into the source tree"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        generate_stubs(HERE)


setup(cmdclass={"build_py": BuildPyWithStubs, "gen_stubs": GenStubs})
