"""The router's side of the CNI plugin: attach/detach/check pods (IPAM + pod plumbing), readiness, GC, and the
completion of DELs the plugin recorded while the router was down.

POST /cni/add   {"container_id", "ifname", "netns", "hairpin"?, "args"?}  -> {"ip", "cidr", "gateway", "mtu", "mac",
                "ips": [{"cidr", "gateway"}...], "dns"?, "names"?, ...}    ("ips": one per family, IPv4 first; "ip",
                "cidr" and "gateway" are the first's. args: CNI_ARGS' K8S_POD_NAME/NAMESPACE name the pod in DNS)
POST /cni/del   {"container_id", "ifname", "netns"?}             -> {"released": [ip...], "detached": bool}
POST /cni/check {"container_id", "ifname", "netns", "ip"?, "ips"?} -> {} or 409 {"error": what differs}
GET  /cni/status                                                 -> {"ready", "code"?, "reason"?}
POST /cni/gc    {"valid": [{"container_id", "ifname"}]}          -> {"released": [...]}

A pending DEL is a JSON file {"container_id", "ifname"} in the pending directory, written atomically by the
plugin; the router completes it (idempotently) at start and every few seconds, then removes the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from weave_node.api import pending_dels
from weave_node.api.ipam import _body, _json
from weave_node.core.address import ip_str
from weave_node.core.cni import pending_name
from weave_node.datapath.model import Pod
from weave_node.datapath.netlink import DatapathError
from weave_node.dns.node import Dns
from weave_node.ipam.errors import BadRequest, Conflict, IpamError, NotFound, Unavailable
from weave_node.ipam.families import Ipam
from weave_node.ipam.model import INTERNAL_PREFIX, Key
from weave_node.overlay.service import OverlayService

log = logging.getLogger("weave_node.cni")
PENDING_SCAN = 2.0
NO_ADDRESS = str(ipaddress.IPv4Address(0))  # a DEL's pod: detach needs no address


def host_ifname(container_id: str, ifname: str) -> str:
    """The host end of a pod's veth: stable per attachment, 15 characters (IFNAMSIZ - 1)."""
    return "vethwe" + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:9]


class PodService:
    def __init__(
        self,
        ipam: Ipam,
        overlay: OverlayService,
        pending_dir: Path,
        *,
        on_op: Callable[[str, float, bool], None] | None = None,
        dns: Dns | None = None,
    ) -> None:
        self.dns = dns
        self.on_op = on_op  # (operation, seconds, ok): the metrics' CNI histograms
        self.ipam = ipam
        self.overlay = overlay
        self.pending_dir = pending_dir
        self._task: asyncio.Task[None] | None = None
        self._locks: dict[Key, tuple[asyncio.Lock, list[int]]] = {}  # one operation at a time per attachment
        self.counters = {"add": 0, "del": 0, "check": 0, "gc": 0, "pending_completed": 0}

    def _pod(self, key: Key, netns: str, ips: tuple[int, ...] = (), hairpin: bool = False) -> Pod:
        """The pod's plumbing with its address in each family (`ips`, IPv4 first; none: for a DEL)."""
        cidrs = [f"{ip_str(ip)}/{self.ipam.family(ip).range.prefix}" for ip in ips] or [NO_ADDRESS + "/32"]
        gateways = self._gateways() if ips else (NO_ADDRESS, "")
        return Pod(
            netns=netns,
            ifname=key.ifname,
            host_ifname=host_ifname(key.container_id, key.ifname),
            address=cidrs[0],
            gateway=gateways[0],
            mtu=self.overlay.mtu,
            hairpin=hairpin,
            address6=cidrs[1] if len(cidrs) > 1 else "",
            gateway6=gateways[1] if len(cidrs) > 1 else "",
        )

    def _gateways(self) -> tuple[str, str]:
        """The bridge's addresses: the pods' gateways (IPv4, and IPv6 or "")."""
        cidr, cidr6 = self.overlay.bridge_cidr, self.overlay.bridge_cidr6
        if not cidr:
            raise Unavailable("the weave bridge has no address yet (IPAM not ready)")
        if self.ipam.dual is not None and not cidr6:
            raise Unavailable("the weave bridge has no IPv6 address yet (IPv6 IPAM not ready)")
        return cidr.split("/")[0], (cidr6 or "").split("/")[0]

    @contextlib.asynccontextmanager
    async def _lock(self, key: Key) -> AsyncIterator[None]:
        """Serialise operations on one attachment; the entry goes when nobody holds or waits for it."""
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]

    async def add(self, key: Key, netns: str, hairpin: bool, args: Mapping[str, str] | None = None) -> dict[str, Any]:
        _check_netns(netns)
        async with self._lock(key):
            # A DEL recorded while we were down is older than this ADD: finish it first, or it would later
            # remove the pod this ADD creates.
            pending = self.pending_dir / pending_name(key.container_id, key.ifname)
            if pending.exists():
                await self._delete(key, "")
                pending.unlink(missing_ok=True)
            return await self._add(key, netns, hairpin, args or {})

    async def _add(self, key: Key, netns: str, hairpin: bool, args: Mapping[str, str]) -> dict[str, Any]:
        self._gateways()  # not ready: fail before allocating
        before = self.ipam.lookup(key)
        addresses = await self.ipam.allocate(key, durable=False)  # a pod's: it dies with the kernel
        pod = self._pod(key, netns, addresses, hairpin)
        try:
            plumbed = await self.overlay.pods.attach(pod)
        except BaseException:  # also a cancellation: never leave an address behind that no pod uses
            self.ipam.release_new(key, before)  # roll back what this ADD did; an earlier ADD's addresses stay
            raise
        self.counters["add"] += 1
        ips = [{"cidr": pod.address, "gateway": pod.gateway}]
        if pod.address6:
            ips.append({"cidr": pod.address6, "gateway": pod.gateway6})
        answer = {
            "ip": pod.address.split("/")[0],
            "cidr": pod.address,
            "gateway": pod.gateway,
            "ips": ips,
            "mtu": pod.mtu,
            "mac": plumbed["mac"],
            "host_ifname": plumbed["host_ifname"],
            "host_mac": plumbed["host_mac"],
        }
        if self.dns is not None:  # (never fails the ADD: a bad name is logged and skipped)
            answer["names"] = self.dns.name_pod(_container(key), args, addresses)
            answer["dns"] = self.dns.cni_dns()
        return answer

    async def delete(self, key: Key, netns: str) -> dict[str, Any]:
        async with self._lock(key):
            return await self._delete(key, netns)

    async def _delete(self, key: Key, netns: str) -> dict[str, Any]:
        pod = self._pod(key, netns or "/nonexistent")  # (addresses are unused by detach)
        detached = await self.overlay.pods.detach(pod)
        if self.dns is not None:
            self.dns.forget_pod(_container(key))
        try:
            released = [ip_str(ip) for ip in self.ipam.release(key.container_id, key.ifname)]
        except NotFound:
            released = []  # DEL is idempotent: already released (or never allocated)
        self.counters["del"] += 1
        return {"released": released, "detached": detached}

    async def check(self, key: Key, netns: str, want: list[str]) -> None:
        async with self._lock(key):
            await self._check(key, netns, want)

    async def _check(self, key: Key, netns: str, want: list[str]) -> None:
        """`want`: the addresses ADD returned (any subset of them may be given)."""
        held = self.ipam.lookup(key)
        for _ip, lost, conflict in held:
            if lost is not None:
                why = "in use by another pod too: restart this pod" if conflict else "asking"
                raise Conflict(
                    f"{ip_str(lost)} of {key.container_id}/{key.ifname} was reclaimed while this host was cut off "
                    f"({why})"
                )
        if all(h.ip is None for h in held):  # (a pod from before a change to dual-stack holds IPv4's alone)
            raise Conflict(f"no address is allocated to {key.container_id}/{key.ifname}")
        ips = tuple(h.ip for h in held if h.ip is not None)
        have = [ip_str(ip) for ip in ips]
        for ip in want:
            if ip not in have:
                raise Conflict(f"{key.container_id}/{key.ifname} has {', '.join(have)}, not {ip} as ADD returned")
        pod = self._pod(key, netns, ips)
        state = await self.overlay.pods.state(pod)
        if not state:
            raise Conflict(f"interface {key.ifname} does not exist in {netns}")
        problems = []
        for cidr, gateway in ((pod.address, pod.gateway), (pod.address6, pod.gateway6)):
            if cidr and cidr not in state["addresses"]:
                problems.append(f"address {cidr} missing (has {', '.join(state['addresses']) or 'none'})")
            if gateway and gateway not in state["gateways"]:
                problems.append(f"no default route via {gateway}")
        if state["mtu"] != pod.mtu:
            problems.append(f"MTU {state['mtu']}, not {pod.mtu}")
        if not state["up"]:
            problems.append("interface is down")
        if problems:
            raise Conflict(f"{key.ifname} in {netns}: " + "; ".join(problems))
        self.counters["check"] += 1

    def readiness(self) -> dict[str, Any]:
        ready, waiting = self.ipam.ready()
        if not ready:
            return {"ready": False, "code": 50, "reason": f"IPAM cannot allocate: {waiting}"}
        try:
            self._gateways()
        except Unavailable as exc:
            return {"ready": False, "code": 50, "reason": str(exc)}
        if self.overlay.problems:
            return {"ready": False, "code": 51, "reason": "datapath: " + "; ".join(self.overlay.problems)}
        return {"ready": True}

    async def gc(self, valid: set[Key]) -> list[str]:
        held = self.ipam.held_keys()
        stale = [k for k in held if k not in valid and not k.container_id.startswith(INTERNAL_PREFIX)]
        released = []
        for key in stale:
            result = await self.delete(key, "")
            released += result["released"]
        self.counters["gc"] += 1
        if released:
            log.info("CNI GC released %d address(es): %s", len(released), ", ".join(released))
        return released

    # --- DELs recorded while the router was down ----------------------------------------------------------

    async def start(self) -> None:
        pending_dels.prepare(self.pending_dir)
        try:
            await self.complete_pending()
        except Exception:  # a bad record must never keep the router from starting
            log.exception("pending CNI DELs")
        self._task = asyncio.create_task(self._pending_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _pending_loop(self) -> None:
        while True:
            await asyncio.sleep(PENDING_SCAN)
            try:
                await self.complete_pending()
            except Exception:  # keep the loop alive: the next scan retries
                log.exception("pending CNI DELs")

    async def complete_pending(self) -> int:
        if not pending_dels.dir_ok(self.pending_dir):
            return 0
        done = 0
        for path in sorted(self.pending_dir.glob("*.json")):
            key = pending_dels.read(path)
            if key is None:
                continue
            try:
                result = await self.delete(key, "")
            except (DatapathError, IpamError) as exc:
                log.error("pending CNI DEL of %s/%s failed (%s): retrying later", key.container_id, key.ifname, exc)
                continue
            log.info(
                "completed a CNI DEL recorded while the router was down: %s/%s, released %s",
                key.container_id,
                key.ifname,
                ", ".join(result["released"]) or "nothing",
            )
            path.unlink(missing_ok=True)
            done += 1
        self.counters["pending_completed"] += done
        return done


def _container(key: Key) -> str:
    """The attachment a DNS record belongs to."""
    return f"{key.container_id}/{key.ifname}"


def _args(doc: dict[str, Any]) -> dict[str, str]:
    raw = doc.get("args") or {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise BadRequest("'args' must be an object of strings (the CNI_ARGS pairs)")
    return raw


def _check_netns(path: str) -> None:
    """A pod's namespace: it exists, it is a network namespace, and it is not the router's own."""
    try:
        st, own = os.stat(path), os.stat("/proc/self/ns/net")
    except OSError as exc:
        raise BadRequest(f"netns {path}: {exc.strerror}") from None
    if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
        raise BadRequest(f"netns {path} is the host's own network namespace")


def _str(doc: dict[str, Any], field: str, *, required: bool = True) -> str:
    value = doc.get(field, "")
    if not isinstance(value, str) or (required and not value):
        raise BadRequest(f"{field!r} must be a non-empty string")
    return value


def _pod_key(doc: dict[str, Any]) -> Key:
    key = Key(_str(doc, "container_id"), _str(doc, "ifname"))
    key.validate()
    if key.container_id.startswith(INTERNAL_PREFIX):
        raise BadRequest(f"container ids starting with {INTERNAL_PREFIX!r} are the router's own")
    return key


def _local_only(req: web.Request, what: str = "the CNI endpoints") -> None:
    """The CNI endpoints change the host's network as root: only on the unix socket (mode 0600), never on TCP,
    where any local user or host-network pod could reach them."""
    if req.transport is None or not isinstance(req.transport.get_extra_info("sockname"), str):
        raise web.HTTPForbidden(
            text=json.dumps({"error": f"{what} are served on the router's unix socket only"}),
            content_type="application/json",
        )


async def _timed(pods: PodService, op: str, work: Awaitable[web.Response]) -> web.Response:
    started = time.monotonic()
    ok = False
    try:
        response = await work
        ok = response.status < 400
        return response
    finally:
        if pods.on_op is not None:
            pods.on_op(op, time.monotonic() - started, ok)


def add_pod_routes(app: web.Application, pods: PodService) -> None:
    async def add(req: web.Request) -> web.Response:
        _local_only(req)
        doc = await _body(req)
        try:
            key, netns, hairpin = _pod_key(doc), _str(doc, "netns"), bool(doc.get("hairpin", False))
            return _json(await pods.add(key, netns, hairpin, _args(doc)))
        except DatapathError as exc:
            return _json({"error": str(exc)}, status=500)

    async def delete(req: web.Request) -> web.Response:
        _local_only(req)
        doc = await _body(req)
        try:
            return _json(await pods.delete(_pod_key(doc), _str(doc, "netns", required=False)))
        except DatapathError as exc:
            return _json({"error": str(exc)}, status=500)

    async def check(req: web.Request) -> web.Response:
        _local_only(req)
        doc = await _body(req)
        want = [doc["ip"]] if doc.get("ip") is not None else []
        if isinstance(doc.get("ips"), list):
            want += doc["ips"]
        try:
            want = [str(ipaddress.ip_interface(str(w)).ip) for w in want]
        except ValueError:
            raise BadRequest(f"'ip'/'ips' hold something that is not an address: {want!r}") from None
        try:
            await pods.check(_pod_key(doc), _str(doc, "netns"), want)
        except DatapathError as exc:
            return _json({"error": str(exc)}, status=409)
        return _json({})

    async def status(req: web.Request) -> web.Response:
        _local_only(req)
        return _json(pods.readiness())

    async def gc(req: web.Request) -> web.Response:
        _local_only(req)
        doc = await _body(req)
        valid = doc.get("valid")
        if not isinstance(valid, list):
            raise BadRequest("'valid' must be a list of {container_id, ifname}")
        keys = {_pod_key(v) for v in valid if isinstance(v, dict)}
        return _json({"released": await pods.gc(keys)})

    def timed(op: str, handler: Callable[[web.Request], Awaitable[web.Response]]) -> Any:
        async def run(req: web.Request) -> web.Response:
            return await _timed(pods, op, handler(req))

        return run

    app.router.add_post("/cni/add", timed("add", add))
    app.router.add_post("/cni/del", timed("del", delete))
    app.router.add_post("/cni/check", timed("check", check))
    app.router.add_get("/cni/status", status)
    app.router.add_post("/cni/gc", timed("gc", gc))
