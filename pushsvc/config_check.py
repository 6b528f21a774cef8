"""Checking a node's configuration without starting it (``pushsvc check-config``).

Everything ``serve`` would refuse at start-up is a problem: a value that does
not parse, an unknown setting, settings that contradict each other, the
secure-by-default rules, a JWT public key file that is missing or not a PEM
public key, TLS files that ``serve`` would refuse (``pushsvc.tls.load``), a data
directory that is a file. What depends on the user the
check runs as (a file this user may not read, a directory it may not write) is
a warning only: the node's own user may well have the access.

Environment files (``--env-file``, the format of systemd's ``EnvironmentFile=``)
are read as the node would get them: on top of the process environment, later
files winning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pushsvc.config import ENV_PREFIX, Settings, check_settings
from pushsvc.errors import ConfigError


@dataclass
class Report:
    settings: Settings | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    from_env: int = 0  # PUSHSVC_* variables that took part


def check(
    config_file: str | None,
    env_files: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Report:
    report = Report()
    env = dict(os.environ if environ is None else environ)
    for path in env_files:
        try:
            env.update(read_env_file(path))
        except ConfigError as exc:
            report.problems.append(str(exc))
    report.from_env = sum(1 for k in env if k.startswith(ENV_PREFIX))
    settings, problems = check_settings(config_file, env)
    report.problems += problems
    if settings is None or report.problems:
        return report
    _check_files(settings, report)
    if not report.problems:
        report.settings = settings
    return report


def read_env_file(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines; ``#`` and ``;`` comments; values optionally quoted."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read environment file {path}: {exc.strerror}") from None
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key or any(c.isspace() for c in key):
            raise ConfigError(f"{path}:{number}: not a KEY=VALUE line")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key] = value
    return out


def _check_files(s: Settings, report: Report) -> None:
    if s.jwt_algorithm != "HS256" and s.jwt_public_key_file:
        _check_public_key(s.jwt_public_key_file, report)
    _check_tls(s, report)
    data_dir = Path(s.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        report.problems.append(f"data_dir {data_dir} is not a directory")
    elif data_dir.is_dir() and not os.access(data_dir, os.W_OK | os.X_OK):
        report.warnings.append(
            f"data_dir {data_dir} is not writable by uid {os.getuid()}: "
            "make sure the node's user may write it"
        )


def _check_tls(s: Settings, report: Report) -> None:
    from pushsvc.tls import TLSFiles, load

    files = TLSFiles.from_settings(s)
    if files is None:
        return
    paths = [p for p in (files.cert, files.key, files.ca, files.cluster_ca) if p]
    hidden = [p for p in paths if Path(p).is_file() and not os.access(p, os.R_OK)]
    if hidden:
        report.warnings.append(
            f"{', '.join(hidden)} not readable by uid {os.getuid()}: TLS files not checked"
        )
        return
    try:
        load(files)
    except ConfigError as exc:
        report.problems.append(str(exc))


def _check_public_key(path: str, report: Report) -> None:
    name = f"PUSHSVC_JWT_PUBLIC_KEY_FILE {path}"
    try:
        data = Path(path).read_bytes()
    except PermissionError:
        report.warnings.append(f"{name} is not readable by uid {os.getuid()}: not checked")
        return
    except OSError as exc:
        report.problems.append(f"cannot read {name}: {exc.strerror}")
        return
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        load_pem_public_key(data)
    except (ValueError, TypeError):
        report.problems.append(f"{name} is not a PEM public key")
