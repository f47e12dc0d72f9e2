"""Errors of the mesh layer."""

from __future__ import annotations

from weave_node.core.errors import WeaveError


class ProtocolError(WeaveError):
    """A peer sent something we cannot accept: bad framing, garbage, a wrong password, an unknown version.

    Every decoder raises this (and only this) on bad input; the router then closes that one connection and
    keeps serving the others.
    """
