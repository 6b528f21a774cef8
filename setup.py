"""Build hook: ship the browser client with the node, for the /demo page.

The generated protobuf/gRPC modules are not built here: they live in the
pushsvc-client distribution (clients/python, package ``pushsvc_client.v1``),
which this package depends on and imports them from. One copy per process is
all protobuf's descriptor pool allows.
"""

from __future__ import annotations

import pathlib
import shutil

from setuptools import setup

ROOT = pathlib.Path(__file__).resolve().parent


def copy_js_client() -> None:
    """Ship clients/js/pushsvc.js in the package for the /demo page (not committed twice)."""
    client_js = ROOT / "clients" / "js" / "pushsvc.js"
    if client_js.is_file():  # absent when building from an sdist, which has the copy
        shutil.copyfile(client_js, ROOT / "pushsvc" / "static" / "pushsvc.js")


def remove_stale_protos() -> None:
    """pushsvc/v1, generated here by builds before pushsvc-client, must not be packaged."""
    shutil.rmtree(ROOT / "pushsvc" / "v1", ignore_errors=True)


remove_stale_protos()
copy_js_client()
setup()
