"""The IPAM endpoints of the local API (JSON in, JSON out; errors are {"error": ...} with a 4xx/5xx status).

POST /ipam/allocate {"container_id", "ifname"?, "wait"?, "family"?}  -> {"ip", "cidr", "range"}   idempotent
                    (family "ipv4", the default, or "ipv6" with a dual-stack range)
POST /ipam/claim    {"container_id", "ifname"?, "ip"}     -> {"ip", "cidr", "range"}
POST /ipam/release  {"container_id", "ifname"?}           -> {"released": [ip...]}      404 if none
GET  /ipam/allocations                                    -> [{"ip", "container_id", "ifname"}]
POST /ipam/rmpeer/{peer}                                  -> {"peer", "addresses"}
POST /ipam/leave    {"force"?, "wait"?}                   -> {"handed_to", "nickname", "addresses", "acknowledged"}
                    409 pods still hold addresses (without force), 503 no peer to take it / none confirmed
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from weave_node.core.address import ip_str, parse_ip, parse_ip6
from weave_node.core.errors import ConfigError
from weave_node.ipam.errors import BadRequest, IpamError
from weave_node.ipam.families import Ipam
from weave_node.ipam.model import Key
from weave_node.ipam.service import DEFAULT_WAIT, IpamService
from weave_node.mesh.peer import format_name

MAX_BODY = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(doc, indent=2) + "\n", status=status, content_type="application/json")


@web.middleware
async def ipam_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except IpamError as exc:
        return _json({"error": str(exc)}, status=exc.status)
    except ConfigError as exc:
        return _json({"error": str(exc)}, status=400)


async def _body(req: web.Request) -> dict[str, Any]:
    if req.content_length is not None and req.content_length > MAX_BODY:
        raise BadRequest("request body too large")
    raw = await req.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadRequest("request body too large")
    try:
        doc = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object")
    return doc


def _key(doc: dict[str, Any]) -> Key:
    cid, ifname = doc.get("container_id"), doc.get("ifname", "eth0")
    if not isinstance(cid, str) or not isinstance(ifname, str):
        raise BadRequest('"container_id" (and "ifname", default "eth0") must be strings')
    key = Key(cid, ifname)
    key.validate()
    return key


def _wait(doc: dict[str, Any]) -> float:
    wait = doc.get("wait", DEFAULT_WAIT)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 300:
        raise BadRequest('"wait" must be seconds between 0 and 300')
    return float(wait)


def _family(ipam: Ipam, doc: dict[str, Any]) -> IpamService:
    """The family asked for (default: the router's first, IPv4's unless its range is IPv6 alone)."""
    family = doc.get("family", "ipv6" if ipam.primary.range.ipv6 else "ipv4")
    if family not in ("ipv4", "ipv6"):
        raise BadRequest('"family" must be "ipv4" or "ipv6"')
    service = ipam.v6 if family == "ipv6" else ipam.v4
    if service is None:
        raise BadRequest(f"this router has no {'IPv6' if family == 'ipv6' else 'IPv4'} range (IPALLOC_RANGE)")
    ipam.check_held((service,))
    return service


def add_ipam_routes(app: web.Application, ipam: Ipam) -> None:
    def answer(ip: int) -> web.Response:
        span = ipam.family(ip).range
        return _json({"ip": ip_str(ip), "cidr": f"{ip_str(ip)}/{span.prefix}", "range": str(span)})

    async def allocate(req: web.Request) -> web.Response:
        doc = await _body(req)
        service = _family(ipam, doc)
        return answer(await service.allocate(_key(doc), _wait(doc)))

    async def claim(req: web.Request) -> web.Response:
        doc = await _body(req)
        key = _key(doc)
        if not isinstance(doc.get("ip"), str):
            raise BadRequest('"ip" must be an address string')
        text = doc["ip"].split("/")[0]
        ip = parse_ip6(text) if ":" in text else parse_ip(text)
        await ipam.claim(key, ip, _wait(doc))
        return answer(ip)

    async def release(req: web.Request) -> web.Response:
        doc = await _body(req)
        cid, ifname = doc.get("container_id"), doc.get("ifname")
        if not isinstance(cid, str) or not cid or not (ifname is None or isinstance(ifname, str)):
            raise BadRequest('"container_id" must be a non-empty string ("ifname" optional)')
        return _json({"released": [ip_str(ip) for ip in ipam.release(cid, ifname)]})

    async def allocations(_req: web.Request) -> web.Response:
        return _json(ipam.allocations())

    async def rmpeer(req: web.Request) -> web.Response:
        peer, moved = ipam.rmpeer(req.match_info["peer"])
        return _json({"peer": format_name(peer), "addresses": moved})

    async def leave(req: web.Request) -> web.Response:
        doc = await _body(req)
        force = doc.get("force", False)
        if not isinstance(force, bool):
            raise BadRequest('"force" must be true or false')
        return _json(await ipam.leave(force=force, wait=_wait(doc)))

    app.router.add_post("/ipam/allocate", allocate)
    app.router.add_post("/ipam/claim", claim)
    app.router.add_post("/ipam/release", release)
    app.router.add_get("/ipam/allocations", allocations)
    app.router.add_post("/ipam/rmpeer/{peer}", rmpeer)
    app.router.add_post("/ipam/leave", leave)
