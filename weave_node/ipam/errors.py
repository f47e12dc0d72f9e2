"""IPAM errors. `IpamError.status` is the HTTP status the local API answers with."""

from __future__ import annotations


class IpamError(Exception):
    status = 400


class BadRequest(IpamError):
    status = 400


class NotFound(IpamError):
    status = 404


class Conflict(IpamError):
    status = 409


class Unavailable(IpamError):
    """Not now: the ring is not initialised yet, or no space could be obtained in time. Retry later."""

    status = 503


class DecodeError(IpamError):
    """A peer's IPAM message is malformed (or hostile): it is dropped and counted, never fatal."""


class RingConflict(IpamError):
    """A peer's ring cannot be merged with ours: another range, or a ring created by another bootstrap."""
