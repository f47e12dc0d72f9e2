"""The OpenAPI 3.0 document of the local API (served at GET /openapi.json; the /dns paths answer where the router
runs DNS). Kept next to the handlers; a test walks it and fuzzes every operation (no request may produce a 5xx)."""

from __future__ import annotations

from typing import Any

_ERROR = {"description": "refused", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_OBJ = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
_LIST = {
    "description": "ok",
    "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}},
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_KEY_PROPERTIES: dict[str, Any] = {
    "container_id": {"type": "string", "minLength": 1, "maxLength": 255},
    "ifname": {"type": "string", "default": "eth0"},
    "wait": {"type": "number", "minimum": 0, "maximum": 300},
}
_KEY = {"type": "object", "required": ["container_id"], "properties": _KEY_PROPERTIES}
_POD = {
    "type": "object",
    "required": ["container_id", "ifname", "netns"],
    "properties": {
        "container_id": {"type": "string"},
        "ifname": {"type": "string"},
        "netns": {"type": "string", "description": "path of the pod's network namespace"},
        "hairpin": {"type": "boolean"},
        "ip": {"type": "string", "description": "CHECK: the address ADD returned"},
        "ips": {"type": "array", "items": {"type": "string"}, "description": "CHECK: the addresses ADD returned"},
    },
}
_NAME = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "description": "web or web.weave.local"}, "ip": {"type": "string"}},
}
_CNI_NOTE = "Served on the unix socket only (403 on TCP)."


def _op(summary: str, responses: dict[str, Any], body: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"summary": summary, "responses": responses, **extra}
    if body is not None:
        doc["requestBody"] = _body(body)
    return doc


_PEER = [{"name": "peer", "in": "path", "required": True, "schema": {"type": "string"}}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "weave-node local API", "version": "1"},
    "servers": [{"url": "http://127.0.0.1:6784"}],
    "paths": {
        "/status": {"get": _op("the whole status snapshot (like `weave status`)", {"200": _OBJ})},
        "/report": {"get": _op("the same, under Weave's name", {"200": _OBJ})},
        "/status/{section}": {
            "get": _op(
                "one section: router, peers, connections, targets, ipam, datapath, dns",
                {"200": _OBJ, "404": _ERROR},
                parameters=[{"name": "section", "in": "path", "required": True, "schema": {"type": "string"}}],
            )
        },
        "/connect/{peer}": {"post": _op("dial a peer now and keep it", {"200": _OBJ, "400": _ERROR}, parameters=_PEER)},
        "/forget/{peer}": {"post": _op("stop dialling a peer", {"200": _OBJ, "400": _ERROR}, parameters=_PEER)},
        "/ipam/allocate": {
            "post": _op(
                "an address for a container (idempotent); of the dual-stack IPv6 range with family ipv6",
                {"200": _OBJ, "400": _ERROR, "503": _ERROR},
                {**_KEY, "properties": {**_KEY_PROPERTIES, "family": {"type": "string", "enum": ["ipv4", "ipv6"]}}},
            )
        },
        "/ipam/claim": {
            "post": _op(
                "record that a container has an address",
                {"200": _OBJ, "400": _ERROR, "409": _ERROR, "503": _ERROR},
                {**_KEY, "required": ["container_id", "ip"]},
            )
        },
        "/ipam/release": {"post": _op("release a container's addresses", {"200": _OBJ, "404": _ERROR}, _KEY)},
        "/ipam/allocations": {"get": _op("every address this peer handed out", {"200": _LIST})},
        "/ipam/rmpeer/{peer}": {
            "post": _op(
                "take over a departed peer's space", {"200": _OBJ, "400": _ERROR, "404": _ERROR}, parameters=_PEER
            )
        },
        "/ipam/leave": {
            "post": _op(
                "hand this peer's space to a reachable peer before the host is removed for good",
                {"200": _OBJ, "400": _ERROR, "409": _ERROR, "503": _ERROR},
                {"type": "object", "properties": {"force": {"type": "boolean"}, "wait": {"type": "number"}}},
            )
        },
        "/cni/add": {"post": _op("CNI ADD", {"200": _OBJ, "400": _ERROR, "403": _ERROR, "503": _ERROR}, _POD)},
        "/cni/del": {"post": _op("CNI DEL (idempotent)", {"200": _OBJ, "400": _ERROR, "403": _ERROR}, _POD)},
        "/cni/check": {"post": _op("CNI CHECK", {"200": _OBJ, "400": _ERROR, "403": _ERROR, "409": _ERROR}, _POD)},
        "/cni/status": {"get": _op("CNI STATUS: ready, or code 50/51 and why", {"200": _OBJ, "403": _ERROR})},
        "/cni/gc": {
            "post": _op(
                "CNI GC: release allocations not in the list",
                {"200": _OBJ, "400": _ERROR, "403": _ERROR},
                {"type": "object", "required": ["valid"], "properties": {"valid": {"type": "array"}}},
            )
        },
        "/dns/records": {
            "get": _op("every name every router holds", {"200": _LIST}),
            "post": _op(
                "name an address by hand (gossiped to every router)", {"200": _OBJ, "400": _ERROR, "403": _ERROR}, _NAME
            ),
        },
        "/dns/lookup": {
            "get": _op(
                "the addresses of a name",
                {"200": _OBJ, "400": _ERROR},
                parameters=[{"name": "name", "in": "query", "required": True, "schema": {"type": "string"}}],
            )
        },
        "/dns/remove": {
            "post": _op(
                "remove names added by hand (all of a name's, or one address)",
                {"200": _OBJ, "400": _ERROR, "403": _ERROR},
                _NAME,
            )
        },
        "/openapi.json": {"get": _op("this document", {"200": _OBJ})},
    },
    "components": {
        "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}
    },
}
for _path, _item in OPENAPI["paths"].items():
    if _path.startswith("/cni/"):
        for _method in _item.values():
            _method["description"] = _CNI_NOTE
