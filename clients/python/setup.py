"""Build hook: generate pushsvc_client.v1 from the repository's protos/.

The generated modules are the only Python copy of ``pushsvc/v1/*.proto``: the
server imports them from here too, since protobuf's descriptor pool refuses two
different generated copies of one .proto file in a process. They keep the
contract's file names (``pushsvc/v1/push.proto``) in the descriptor, so
reflection and ``grpcurl`` show the contract's paths; only the Python import
path moves under ``pushsvc_client``. Never committed: every build (wheel,
editable install) makes them, and an sdist carries them for builds without the
repository around it.
"""

from __future__ import annotations

import pathlib
import re

from setuptools import setup

HERE = pathlib.Path(__file__).resolve().parent
PROTOS = HERE.parent.parent / "protos"
OUT = HERE / "pushsvc_client" / "v1"


def generate_protos() -> None:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(PROTOS.rglob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    staging = HERE / "build" / "protoc"
    staging.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={staging}",
        f"--pyi_out={staging}",
        f"--grpc_python_out={staging}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: see the messages above")
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.py*"):
        old.unlink()
    for generated in sorted((staging / "pushsvc" / "v1").glob("*.py*")):
        text = generated.read_text()
        # pushsvc.v1.X -> pushsvc_client.v1.X: imports and the modules' own names.
        text = re.sub(r"\bfrom pushsvc\.v1 import\b", "from pushsvc_client.v1 import", text)
        text = re.sub(r"'pushsvc\.v1\.(\w+_pb2)'", r"'pushsvc_client.v1.\1'", text)
        (OUT / generated.name).write_text(text)
    (OUT / "__init__.py").write_text(
        '"""Generated from protos/pushsvc/v1 by the build (setup.py); never edited."""\n'
    )


if PROTOS.is_dir():
    generate_protos()
elif not (OUT / "push_pb2.py").is_file():
    raise SystemExit(f"{PROTOS} not found and no generated pushsvc_client/v1: cannot build")

setup()
