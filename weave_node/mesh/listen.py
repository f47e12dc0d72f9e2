"""The mesh's TCP listeners: on the configured address, and, when that is the IPv4 wildcard (the default), on
IPv6's too (an IPv6-only socket on the same port), so peers may dial us over either family. A host without IPv6
listens on IPv4 alone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from weave_node.core.errors import ConfigError

log = logging.getLogger("weave_node.mesh")
ANY4, ANY6 = "0.0.0.0", "::"  # noqa: S104 - peers connect from other hosts by design

Accept = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def listen(accept: Accept, host: str, port: int) -> list[asyncio.Server]:
    """The servers (the first on `host`); their port is the first's (`port` 0: the kernel's choice)."""
    try:
        first = await asyncio.start_server(accept, host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    servers = [first]
    if host == ANY4:
        bound = first.sockets[0].getsockname()[1]
        try:
            servers.append(await asyncio.start_server(accept, ANY6, bound))  # (asyncio sets IPV6_V6ONLY)
            log.info("mesh: listening on [::]:%d too (peers over IPv6)", bound)
        except OSError as exc:
            log.info("mesh: no IPv6 listener on [::]:%d (%s): peers reach us over IPv4 only", bound, exc.strerror)
    return servers


async def close(servers: list[asyncio.Server]) -> None:
    for server in servers:
        server.close()
    for server in servers:
        try:
            await server.wait_closed()
        except Exception:  # noqa: S112 - closing: nothing left to do about it
            continue
