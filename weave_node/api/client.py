"""A stdlib client of the router's local API (unix socket first, then 127.0.0.1:6784)."""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any

from weave_node.core.address import parse_hostport
from weave_node.core.errors import WeaveError
from weave_node.core.facts import DEFAULT_STATUS_ADDR, DEFAULT_STATUS_SOCKET


class ApiError(WeaveError):
    pass


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def request(
    method: str,
    path: str,
    *,
    addr: str | None = None,
    socket_path: str | None = None,
    timeout: float = 5.0,
    body: dict[str, Any] | None = None,
) -> Any:
    conn: http.client.HTTPConnection
    if addr:
        host, port = parse_hostport(addr, "--addr")
        conn, where = http.client.HTTPConnection(host, port, timeout=timeout), f"http://{addr}"
    else:
        sock = socket_path or os.environ.get("WEAVE_STATUS_SOCKET") or DEFAULT_STATUS_SOCKET
        if os.path.exists(sock):
            conn, where = _UnixHTTPConnection(sock, timeout), f"unix:{sock}"
        else:
            host, port = parse_hostport(DEFAULT_STATUS_ADDR, "--addr")
            conn, where = http.client.HTTPConnection(host, port, timeout=timeout), f"http://{DEFAULT_STATUS_ADDR}"
    try:
        if body is None:
            conn.request(method, path)
        else:
            conn.request(method, path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
    except OSError as exc:
        raise ApiError(
            f"cannot reach the router's API at {where}: {exc.strerror or exc} (is weave-node running?)"
        ) from None
    finally:
        conn.close()
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ApiError(f"the router's API at {where} answered {resp.status} with something that is not JSON") from None
    if resp.status >= 400:
        raise ApiError(doc.get("error", f"HTTP {resp.status}") if isinstance(doc, dict) else f"HTTP {resp.status}")
    return doc
