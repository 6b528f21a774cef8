"""Build hook: generate the protobuf/gRPC modules from protos/ into the package.

Generated code is never committed; every build (``pip install .``, editable
installs, ``make proto``) produces it from the .proto contract.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

from setuptools import setup

ROOT = pathlib.Path(__file__).resolve().parent


def generate_protos(out_dir: pathlib.Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted((ROOT / "protos").rglob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT / 'protos'}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: see the messages above")
    pkg = out_dir / "pushsvc" / "v1"
    (pkg / "__init__.py").write_text('"""Generated from protos/pushsvc/v1 by the build."""\n')


def copy_js_client() -> None:
    """Ship clients/js/pushsvc.js in the package for the /demo page (not committed twice)."""
    client_js = ROOT / "clients" / "js" / "pushsvc.js"
    if client_js.is_file():  # absent when building from an sdist, which has the copy
        shutil.copyfile(client_js, ROOT / "pushsvc" / "static" / "pushsvc.js")


# Generate before setup() so that package discovery sees pushsvc.v1, on a
# clean checkout as on a rebuild.
generate_protos(ROOT)
copy_js_client()

if sys.argv[1:] != ["protos"]:  # `python setup.py protos`: generate only
    setup()
