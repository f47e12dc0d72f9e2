"""The local status API: HTTP on 127.0.0.1:6784 and a unix socket (never on other addresses unless the operator
says so explicitly). Read-only endpoints return JSON built by api.status from the router's state."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from weave_node.api.dns import add_dns_routes
from weave_node.api.ipam import add_ipam_routes, ipam_errors
from weave_node.api.openapi import OPENAPI
from weave_node.api.pods import PodService, add_pod_routes
from weave_node.api.reload import Apply, add_reload_route
from weave_node.api.status import ConnView, build_status
from weave_node.core.address import parse_hostport
from weave_node.core.errors import ConfigError
from weave_node.dns.node import Dns
from weave_node.ipam.families import Ipam
from weave_node.mesh.router import PeerConn, Router
from weave_node.overlay.service import OverlayService

log = logging.getLogger("weave_node.api")


def _view(pc: PeerConn, state: str) -> ConnView:
    remote = pc.conn.remote
    info = f"{'encrypted' if remote.encrypted else 'unencrypted'}, v{remote.version}" if remote else ""
    return ConnView(pc.outbound, pc.address, state, pc.name, pc.nickname, info)


def router_status(router: Router) -> dict[str, Any]:
    views = [_view(pc, "established") for pc in router.established.values()]
    views += [_view(pc, "handshaking") for pc in router.pending]
    return build_status(
        name=router.identity.name,
        nickname=router.identity.nickname,
        uid=router.identity.uid,
        encrypted=router.protocol_config.password_key is not None,
        port=router.listen_port,
        conn_limit=router.config.conn_limit,
        records=router.topology.records,
        routes=router.routes,
        connections=views,
        targets=router.connector.targets.values(),
        terminations=router.terminations,
        refused=router.refused,
        message_errors=router.message_errors,
        now=router.clock.now(),
        started_at=router.started_at,
    )


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(doc, indent=2) + "\n", status=status, content_type="application/json")


def full_status(
    router: Router, ipam: Ipam | None = None, overlay: OverlayService | None = None, dns: Dns | None = None
) -> dict[str, Any]:
    """The whole status snapshot: what `weave-node status --json` prints and what the metrics are made of."""
    doc = router_status(router)
    if ipam is not None:
        doc["ipam"] = ipam.status()
    if overlay is not None:
        doc["datapath"] = overlay.status()
    doc["dns"] = dns.status() if dns is not None else {"enabled": False}
    return doc


def make_app(
    router: Router,
    *,
    ipam: Ipam | None = None,
    overlay: OverlayService | None = None,
    pods: PodService | None = None,
    apply: Apply | None = None,
    dns: Dns | None = None,
) -> web.Application:
    def snapshot() -> dict[str, Any]:
        return full_status(router, ipam, overlay, dns)

    async def status(_req: web.Request) -> web.Response:
        return json_response(snapshot())

    async def section(req: web.Request) -> web.Response:
        doc = snapshot()
        key = req.match_info["section"]
        if key not in ("router", "peers", "connections", "targets", "ipam", "datapath", "dns") or key not in doc:
            return json_response({"error": f"unknown status section {key!r}"}, status=404)
        return json_response(doc[key])

    async def connect(req: web.Request) -> web.Response:
        peer = req.match_info["peer"]
        try:
            addr = router.connect(peer)
        except ConfigError as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response({"connecting": str(addr)})

    async def forget(req: web.Request) -> web.Response:
        try:
            found = router.forget(req.match_info["peer"])
        except ConfigError as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response({"forgotten": found})

    app = web.Application(middlewares=[ipam_errors])
    if ipam is not None:
        add_ipam_routes(app, ipam)
    if pods is not None:
        add_pod_routes(app, pods)
    if apply is not None:
        add_reload_route(app, apply)
    if dns is not None:
        add_dns_routes(app, dns)

    async def openapi(_req: web.Request) -> web.Response:
        return json_response(OPENAPI)

    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/status", status)
    app.router.add_get("/report", status)
    app.router.add_get("/status/{section}", section)
    app.router.add_post("/connect/{peer}", connect)
    app.router.add_post("/forget/{peer}", forget)
    return app


class ApiServer:
    def __init__(
        self,
        router: Router,
        tcp_addr: str,
        socket_path: str,
        *,
        ipam: Ipam | None = None,
        overlay: OverlayService | None = None,
        pods: PodService | None = None,
        apply: Apply | None = None,
        dns: Dns | None = None,
    ) -> None:
        app = make_app(router, ipam=ipam, overlay=overlay, pods=pods, apply=apply, dns=dns)
        self.runner = web.AppRunner(app, access_log=None)
        self.tcp_addr = tcp_addr
        self.socket_path = socket_path
        self.port = 0

    async def start(self) -> None:
        await self.runner.setup()
        if self.tcp_addr:
            host, port = parse_hostport(self.tcp_addr, "--status-addr")
            site = web.TCPSite(self.runner, host, port)
            await site.start()
            sockets = getattr(site._server, "sockets", None) or []  # to learn the port when 0 was asked for
            self.port = sockets[0].getsockname()[1] if sockets else port
            log.info("status API on http://%s:%d", host, self.port)
        if self.socket_path:
            path = Path(self.socket_path)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            old = os.umask(0o077)
            try:
                await web.UnixSite(self.runner, str(path)).start()
            finally:
                os.umask(old)
            log.info("status API on unix:%s", path)

    async def stop(self) -> None:
        await self.runner.cleanup()
        if self.socket_path:
            with contextlib.suppress(FileNotFoundError):
                Path(self.socket_path).unlink()
