"""Errors that carry a one-line, user-facing message."""

from __future__ import annotations


class WeaveError(Exception):
    """Base for errors whose message is shown to a user as one line (no traceback)."""


class ConfigError(WeaveError):
    """Bad input: a flag, a config file or an inventory that cannot be used. Nothing was changed."""
