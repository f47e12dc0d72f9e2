"""The DNS endpoints of the local API. Reads on both listeners; writes on the unix socket only (as the CNI ones).

GET  /dns/records                      -> [{"name", "ip", "container", "owner", "ours"}]   every peer's
GET  /dns/lookup?name=web              -> {"name", "ips": [...]}                           (relative to the domain)
POST /dns/records {"name", "ip"}       -> {"name", "ip"}                                  a record by hand
POST /dns/remove  {"name", "ip"?}      -> {"removed": n}                                  records by hand only
"""

from __future__ import annotations

from aiohttp import web

from weave_node.api.ipam import _body, _json
from weave_node.api.pods import _local_only
from weave_node.core.address import ip_str
from weave_node.core.errors import ConfigError
from weave_node.dns.node import Dns
from weave_node.dns.records import InvalidRecord
from weave_node.dns.service import any_ip
from weave_node.ipam.errors import BadRequest


def _name(doc: dict[str, object], dns: Dns) -> str:
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("'name' must be a non-empty string")
    domain = "." + dns.settings.domain
    bare = name.lower().removesuffix(".")
    return bare.removesuffix(domain) if bare.endswith(domain) else name  # web or web.weave.local: the same


def add_dns_routes(app: web.Application, dns: Dns) -> None:
    async def records(_req: web.Request) -> web.Response:
        return _json(dns.records.listing())

    async def lookup(req: web.Request) -> web.Response:
        name = _name(dict(req.query), dns)
        return _json({"name": name, "ips": [ip_str(ip) for ip in dns.records.lookup(name)]})

    async def add(req: web.Request) -> web.Response:
        _local_only(req, "the DNS writes")
        doc = await _body(req)
        try:
            record = dns.records.add(_name(doc, dns), any_ip(str(doc.get("ip", ""))))
        except (InvalidRecord, ConfigError) as exc:
            raise BadRequest(str(exc)) from None
        return _json({"name": record.name, "ip": ip_str(record.ip)})

    async def remove(req: web.Request) -> web.Response:
        _local_only(req, "the DNS writes")
        doc = await _body(req)
        try:
            ip = any_ip(str(doc["ip"])) if doc.get("ip") else None
            removed = dns.records.remove(_name(doc, dns), ip)
        except (InvalidRecord, ConfigError) as exc:
            raise BadRequest(str(exc)) from None
        return _json({"removed": removed})

    app.router.add_get("/dns/records", records)
    app.router.add_get("/dns/lookup", lookup)
    app.router.add_post("/dns/records", add)
    app.router.add_post("/dns/remove", remove)
