"""The package as users get it: the stubs inside, generated from the
repository's proto and in sync with it, and a wheel that builds with nothing
but the package registry (`pip wheel`, build isolation, no system protoc)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

import stoa_worker
from stoa_worker._proto import stoa_pb2

PACKAGE = Path(__file__).resolve().parent.parent
PROTO_ROOT = PACKAGE.parent.parent / "proto"


def test_the_installed_package_is_not_the_source_tree() -> None:
    # The tests run against the installed package, as users have it.
    assert Path(stoa_worker.__file__).resolve().parent != PACKAGE / "src" / "stoa_worker"
    assert Path(stoa_pb2.__file__).parent.joinpath("stoa_pb2_grpc.py").is_file()
    assert Path(stoa_pb2.__file__).parent.joinpath("stoa_pb2.pyi").is_file()
    assert Path(stoa_worker.__file__).parent.joinpath("py.typed").is_file()


def test_the_installed_stubs_match_the_proto() -> None:
    """A stale install (setup.sh not rerun after a proto change) fails here."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        descriptor_set = os.path.join(out, "stoa.pb")
        code = protoc.main(
            ["protoc", f"-I{PROTO_ROOT}", f"--descriptor_set_out={descriptor_set}", "stoa/v1/stoa.proto"]
        )
        assert code == 0
        fresh = descriptor_pb2.FileDescriptorSet.FromString(Path(descriptor_set).read_bytes()).file[0]
    # The generated code embeds the descriptor without json names.
    for message in fresh.message_type:
        clear_json_names(message)
    installed = descriptor_pb2.FileDescriptorProto.FromString(stoa_pb2.DESCRIPTOR.serialized_pb)
    assert installed == fresh, "the installed stubs are stale: run functions/python/setup.sh"


def clear_json_names(message) -> None:  # type: ignore[no-untyped-def]
    for f in message.field:
        f.ClearField("json_name")
    for nested in message.nested_type:
        clear_json_names(nested)


@pytest.mark.skipif(os.environ.get("STOA_SKIP_WHEEL") == "1", reason="STOA_SKIP_WHEEL=1")
def test_a_wheel_builds_from_the_source_tree_alone() -> None:
    """`pip wheel` with build isolation: setuptools and grpcio-tools come from
    the registry, protoc from grpcio-tools."""
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as copy:
        # A copy, so the build leaves nothing in the work tree.
        tree = Path(copy) / "repo"
        subprocess_copy(PACKAGE, tree / "functions" / "python")
        subprocess_copy(PROTO_ROOT, tree / "proto")
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
             "-w", out, str(tree / "functions" / "python")],
            check=True,
            timeout=600,
        )
        (wheel,) = Path(out).glob("stoa_worker-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("__init__.py", "_worker.py", "py.typed", "_proto/stoa_pb2.py", "_proto/stoa_pb2.pyi",
                 "_proto/stoa_pb2_grpc.py"):
        assert f"stoa_worker/{name}" in names, sorted(names)
    assert not any(n.startswith(("tests/", "examples/")) for n in names), sorted(names)


def subprocess_copy(source: Path, target: Path) -> None:
    import shutil

    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".venv", "build", "*.egg-info", "__pycache__"))
