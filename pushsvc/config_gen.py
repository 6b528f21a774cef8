"""A commented TOML config file with every setting and its default (``pushsvc gen-config``).

Generated from the ``Settings`` fields and their metadata, so it never misses
a setting. Settings with a value are written as they are (loading the file
gives the defaults); settings without a default (secrets, the MongoDB URI...)
are written commented out. ``pushsvc check-config --config FILE`` accepts the
file as it comes out.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from pushsvc.config import ENV_PREFIX, Address, Settings

# Settings that hold secrets: better in an environment file than in this one.
SECRETS = frozenset({"jwt_secret", "cluster_key", "admin_token"})


def toml_value(value: Any) -> str:
    """A setting's value as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Address):
        return json.dumps(str(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(str(value), ensure_ascii=False)


def render(version: str) -> str:
    lines = [
        f"# pushsvc {version}: every setting of a node, with its default.",
        "#",
        "# Run a node with it:   pushsvc serve --config FILE",
        "# Check it:             pushsvc check-config --config FILE",
        f"# Each setting is also an environment variable, {ENV_PREFIX}<NAME>, which wins",
        "# over this file. Keep secrets (jwt_secret, cluster_key, admin_token, api_keys) in",
        "# an environment file readable by the node's user only, not here.",
        "# A setting left at its default can be deleted: the default applies.",
    ]
    for f in fields(Settings):
        env = ENV_PREFIX + f.name.upper()
        doc = f.metadata["doc"]
        lines.append("")
        lines.append(f"# {doc}")
        if f.default is None:
            note = " (a secret: prefer the environment)" if f.name in SECRETS else ""
            lines.append(f"# env {env}; default: unset{note}")
            lines.append(f'# {f.name} = ""')
        else:
            lines.append(f"# env {env}")
            lines.append(f"{f.name} = {toml_value(f.default)}")
    return "\n".join(lines) + "\n"
