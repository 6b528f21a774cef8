"""The docs list every setting, and every limit with the answer a client gets."""

from __future__ import annotations

from pathlib import Path

from pushsvc.config import describe

DOCS = Path(__file__).resolve().parent.parent / "docs"

# The budgets and limits a client can run into: each must be in protocol.md's tables.
CLIENT_LIMITS = (
    "PUSHSVC_MAX_CONNECTIONS",
    "PUSHSVC_MAX_CONNECTIONS_PER_IP",
    "PUSHSVC_HANDSHAKE_TIMEOUT",
    "PUSHSVC_MAX_HEADER_BYTES",
    "PUSHSVC_MAX_HEADER_FIELDS",
    "PUSHSVC_FIRST_FRAME_TIMEOUT",
    "PUSHSVC_MAX_TOKEN_LIFETIME",
    "PUSHSVC_MAX_FRAME_BYTES",
    "PUSHSVC_CLIENT_RATE",
    "PUSHSVC_ABUSE_LIMIT",
    "PUSHSVC_SEND_QUEUE_SIZE",
    "PUSHSVC_CONNECT_QUEUE",
    "PUSHSVC_WELCOME_TIMEOUT",
)


def test_configuration_md_has_a_row_per_setting() -> None:
    text = (DOCS / "configuration.md").read_text()
    for env, default, _ in describe():
        name = env.removeprefix("PUSHSVC_").lower()
        row = f"| `{env}` | `{name}` |"
        assert row in text, f"configuration.md has no row for {env}"
        line = next(line for line in text.splitlines() if line.startswith(row))
        assert (f"`{default}`" if default else "(unset)") in line, (env, default, line)


def test_protocol_md_lists_the_limits_a_client_meets() -> None:
    text = (DOCS / "protocol.md").read_text()
    for env in CLIENT_LIMITS:
        assert f"`{env}`" in text, f"protocol.md does not say what {env} does to a client"
