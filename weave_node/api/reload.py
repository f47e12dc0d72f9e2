"""POST /reload: the live settings (peer list, passwords) applied to the running router without a restart.

Only on the unix socket (root only, mode 0600 directory): the loopback TCP port is open to every local user, and
this endpoint changes whom the router talks to and which passwords it accepts. The body names the password
files; the router reads them itself (the passwords never travel through the API).
    {"peers": [address...], "password_file": path|null, "previous_password_file": path|null,
     "accept_unencrypted": bool}
    -> {"summary": str, "peers_added": [...], "peers_dropped": [...], "connections_reestablished": n}
    400 bad settings (nothing changed), 403 over TCP, 409 needs a restart (encryption turned on or off)
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from weave_node.api.ipam import _body, _json

Apply = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]  # the request's JSON -> the answer (ConfigError: 400)


class NeedsRestart(Exception):
    """The change cannot be applied to a running router (409): the message says what to do."""


def over_unix_socket(req: web.Request) -> bool:
    sock = req.transport.get_extra_info("socket") if req.transport is not None else None
    return getattr(sock, "family", None) == socket.AF_UNIX  # (asyncio wraps it: a TransportSocket)


def add_reload_route(app: web.Application, apply: Apply) -> None:
    lock = asyncio.Lock()  # one reload at a time: each sees the state the previous one left

    async def reload(req: web.Request) -> web.Response:
        if not over_unix_socket(req):
            return _json({"error": "reload is served on the router's unix socket only"}, status=403)
        doc = await _body(req)
        async with lock:
            try:
                return _json(await apply(doc))
            except NeedsRestart as exc:
                return _json({"error": str(exc)}, status=409)

    app.router.add_post("/reload", reload)
