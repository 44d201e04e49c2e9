"""Build hook of the stoa-worker package: generates the gRPC stubs.

The stubs of proto/stoa/v1/stoa.proto (`stoa_pb2.py`, `stoa_pb2.pyi`,
`stoa_pb2_grpc.py`) are made at build time with grpcio-tools (a build
requirement in pyproject.toml, with its own protoc) and put inside the
package as `stoa_worker._proto`, so no generated code lives in git and they
cannot drift from the protocol. The proto comes from the repository
(`../../proto`), or from the copy an sdist carries (`proto/`).

Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTO = Path("stoa") / "v1" / "stoa.proto"


def proto_root() -> Path:
    """The include root holding stoa/v1/stoa.proto."""
    for root in (HERE / "proto", HERE.parent.parent / "proto"):
        if (root / PROTO).is_file():
            return root
    raise RuntimeError(
        f"{PROTO} not found under {HERE / 'proto'} or {HERE.parent.parent / 'proto'}: "
        "build from the Stoa repository (pip install ./functions/python) or from its sdist"
    )


def generate(into: Path) -> None:
    """Writes the stubs into `into` (the package's _proto folder)."""
    from grpc_tools import protoc  # a build requirement

    root = proto_root()
    with tempfile.TemporaryDirectory() as out:
        well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{root}",
                f"-I{well_known}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(root / PROTO),
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed on {root / PROTO} (exit {code})")
        into.mkdir(parents=True, exist_ok=True)
        generated = Path(out) / "stoa" / "v1"
        for name in ("stoa_pb2.py", "stoa_pb2.pyi", "stoa_pb2_grpc.py"):
            text = (generated / name).read_text(encoding="utf-8")
            # protoc writes imports for a top-level `stoa.v1` package; the
            # stubs live inside stoa_worker, so nothing else named `stoa` on
            # sys.path can shadow them.
            text = re.sub(r"^from stoa\.v1 import", "from stoa_worker._proto import", text, flags=re.M)
            (into / name).write_text(text, encoding="utf-8")


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            # An editable install imports from src/: generate there (git-ignored).
            generate(HERE / "src" / "stoa_worker" / "_proto")
        else:
            generate(Path(self.build_lib) / "stoa_worker" / "_proto")


class Sdist(sdist):
    def make_release_tree(self, base_dir, files) -> None:
        super().make_release_tree(base_dir, files)
        # The sdist carries the proto, so a wheel can be built from it alone.
        target = Path(base_dir) / "proto" / PROTO
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(proto_root() / PROTO, target)


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
