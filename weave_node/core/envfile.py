"""Env files as systemd's EnvironmentFile= reads the ones we write: KEY=VALUE lines, `#` comments, blank lines,
optional surrounding quotes. Later files win. Pure but for reading the files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from weave_node.core.errors import ConfigError


def parse_env(text: str, source: str = "env file") -> dict[str, str]:
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key or not key.replace("_", "a").isalnum():
            raise ConfigError(f"{source}, line {number}: not KEY=VALUE: {line[:60]!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in ("'", '"'):
            value = value[1:-1]
        env[key] = value
    return env


def read_env_files(paths: Iterable[Path]) -> dict[str, str]:
    env: dict[str, str] = {}
    for path in paths:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        env.update(parse_env(text, str(path)))
    return env
