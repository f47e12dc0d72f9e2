"""The `weave-net` CNI plugin (spec 0.3.0 to 1.1.0): ADD, DEL, CHECK, STATUS, GC, VERSION.

Hot path: the standard library only (the runtime execs this for every pod; cni/bundle.py inlines the two
weave_node.core modules it imports, so the installed file stands alone). The plugin is thin: it validates
its input, asks the local router over its unix socket (the router does IPAM and the netlink work), and prints
the spec's result for the requested version. Errors are the spec's error JSON on stdout, never a traceback.
A DEL while the router is down is recorded in the pending directory (atomically) and completed by the router
when it returns: an address is never leaked.

Network configuration fields (besides cniVersion/name/type): "socket" (the router's unix socket, default
/run/weave-node/weave.sock), "pendingDir" (default /var/lib/weave-node/cni-pending), "hairpinMode" (bool).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time

from weave_node.core.cni import CNI_LATEST, CNI_PLUGIN, CNI_VERSIONS, pending_name  # inlined
from weave_node.core.facts import DEFAULT_PENDING_DIR, DEFAULT_STATUS_SOCKET  # inlined

MYPY = False
if MYPY:  # annotations only: importing typing/collections.abc costs start-up time the runtime pays per pod
    from collections.abc import Mapping
    from typing import Any

ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_INVALID_ENV = 4
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_NOT_AVAILABLE = 50
ERR_LIMITED = 51
ERR_DATAPATH = 100  # plugin-specific: the router could not plumb the pod
ERR_CHECK = 101  # plugin-specific: CHECK found the pod not as ADD made it
ERR_INTERNAL = 999
ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")  # no `re`: start-up
TIMEOUT = 60.0


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def _vt(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


class RouterDown(Exception):
    pass


MAX_RESPONSE = 1 << 20


def _call(sock_path: str, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One HTTP/1.1 request over the router's unix socket (Connection: close). Hand-written on purpose:
    http.client and its email imports would double the plugin's start-up time.
    RouterDown only when the router could not be reached at all (nothing was asked of it); a failure after the
    request was sent is "try again later", because the router may have done the work."""
    data = json.dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        try:
            sock.connect(sock_path)
        except OSError as exc:
            raise RouterDown(f"the weave-node router is not reachable at {sock_path}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + TIMEOUT
        chunks, size = [], 0
        try:
            sock.sendall(head.encode() + data)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_RESPONSE or time.monotonic() > deadline:
                    raise CniError(ERR_TRY_AGAIN, "the router's answer is too large or too slow: try again later")
        except OSError as exc:
            raise CniError(ERR_TRY_AGAIN, "the router did not answer: try again later", str(exc)) from None
    finally:
        sock.close()
    return _parse_response(b"".join(chunks))


def _parse_response(raw: bytes) -> tuple[int, Any]:
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise CniError(ERR_INTERNAL, "the router sent a malformed HTTP response") from None
    if any(line.lower().replace(" ", "") == "transfer-encoding:chunked" for line in lines[1:]):
        try:
            payload = _dechunk(payload)
        except ValueError:
            raise CniError(ERR_INTERNAL, "the router sent a malformed chunked response") from None
    try:
        return status, json.loads(payload)
    except ValueError:
        raise CniError(ERR_INTERNAL, f"the router answered {status} with something that is not JSON") from None


def _dechunk(payload: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        end = payload.find(b"\r\n", pos)
        size = int(payload[pos:end].split(b";")[0] or b"0", 16) if end >= 0 else 0
        if size == 0:
            return b"".join(out)
        out.append(payload[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2


def _router_error(status: int, doc: Any, what: str) -> CniError:
    msg = doc.get("error", f"HTTP {status}") if isinstance(doc, dict) else f"HTTP {status}"
    if status == 503:
        return CniError(ERR_TRY_AGAIN, f"{what}: try again later", msg)
    if status == 400:
        return CniError(ERR_INVALID_CONFIG, f"{what}: refused", msg)
    return CniError(ERR_DATAPATH, f"{what} failed", msg)


def _conf(stdin: bytes) -> dict[str, Any]:
    if not stdin.strip():
        raise CniError(ERR_DECODE, "no network configuration on stdin")
    try:
        conf = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(ERR_DECODE, "the network configuration is not valid JSON", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(ERR_INVALID_CONFIG, "the network configuration must be a JSON object")
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(ERR_INVALID_CONFIG, "cniVersion is missing")
    if version not in CNI_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version}",
            f"{CNI_PLUGIN} supports {', '.join(CNI_VERSIONS)}",
        )
    for field in ("socket", "pendingDir"):
        if field in conf and (not isinstance(conf[field], str) or not conf[field].startswith("/")):
            raise CniError(ERR_INVALID_CONFIG, f"{field!r} must be an absolute path")
    if "hairpinMode" in conf and not isinstance(conf["hairpinMode"], bool):
        raise CniError(ERR_INVALID_CONFIG, "'hairpinMode' must be true or false")
    return conf


def _env(env: Mapping[str, str], *names: str) -> list[str]:
    values = []
    for name in names:
        value = env.get(name, "")
        if not value:
            raise CniError(ERR_INVALID_ENV, f"{name} is not set")
        values.append(value)
    return values


def _attachment(env: Mapping[str, str]) -> tuple[str, str]:
    cid, ifname = _env(env, "CNI_CONTAINERID", "CNI_IFNAME")
    if not cid[0].isalnum() or not ID_CHARS.issuperset(cid) or len(cid) > 255:
        raise CniError(ERR_INVALID_ENV, "CNI_CONTAINERID is not a valid container id", cid[:100])
    if len(ifname) > 15 or ifname in (".", "..") or any(c.isspace() or c in "/:" for c in ifname):
        raise CniError(ERR_INVALID_ENV, "CNI_IFNAME is not a valid interface name", ifname[:100])
    return cid, ifname


def _netns(env: Mapping[str, str]) -> str:
    (netns,) = _env(env, "CNI_NETNS")
    if not os.path.exists(netns):
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS {netns} does not exist")
    return netns


def _result(version: str, conf: dict[str, Any], add: dict[str, Any], ifname: str, netns: str) -> dict[str, Any]:
    pod_if: dict[str, Any] = {"name": ifname, "mac": add["mac"], "sandbox": netns}
    if _vt(version) >= (1, 1, 0):
        pod_if["mtu"] = add["mtu"]
    ip: dict[str, Any] = {"address": add["cidr"], "gateway": add["gateway"], "interface": 1}
    if _vt(version) < (1, 0, 0):
        ip["version"] = "4"
    return {
        "cniVersion": version,
        "interfaces": [{"name": add["host_ifname"], "mac": add["host_mac"]}, pod_if],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": add["gateway"]}],
        "dns": conf.get("dns") if isinstance(conf.get("dns"), dict) else {},
    }


def _record_pending_del(pending: str, cid: str, ifname: str, netns: str) -> None:
    """Durably note a DEL for the router: temp file, fsync, rename, fsync the directory."""
    os.makedirs(pending, mode=0o700, exist_ok=True)
    st = os.lstat(pending)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise CniError(ERR_INVALID_CONFIG, f"pendingDir {pending} must be a directory of ours, writable only by us")
    name = pending_name(cid, ifname)
    tmp = os.path.join(pending, f".del-{os.getpid()}-{os.urandom(6).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"container_id": cid, "ifname": ifname, "netns": netns}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(pending, name))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(pending, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def run(env: Mapping[str, str], stdin: bytes, out: Any) -> int:
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        out.write(json.dumps({"cniVersion": CNI_LATEST, "supportedVersions": list(CNI_VERSIONS)}) + "\n")
        return 0
    if not command:
        raise CniError(ERR_INVALID_ENV, "CNI_COMMAND is not set", "weave-net is a CNI plugin: a runtime runs it")
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, f"unknown CNI_COMMAND {command!r}")
    conf = _conf(stdin)
    version = conf["cniVersion"]
    if command == "CHECK" and _vt(version) < (0, 4, 0):
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"CHECK is not defined for cniVersion {version}")
    if command in ("STATUS", "GC") and _vt(version) < (1, 1, 0):
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0, not {version}")
    sock = conf.get("socket", DEFAULT_STATUS_SOCKET)
    try:
        return COMMANDS[command](env, conf, sock, out)
    except RouterDown as exc:
        if command == "STATUS":
            raise CniError(ERR_NOT_AVAILABLE, "the weave-node router is not running", str(exc)) from None
        raise CniError(ERR_TRY_AGAIN, "the weave-node router is not running: try again later", str(exc)) from None


def _add(env: Mapping[str, str], conf: dict[str, Any], sock: str, out: Any) -> int:
    if conf.get("prevResult") is not None:
        raise CniError(ERR_INVALID_CONFIG, "weave-net must be the first plugin of its chain (it got a prevResult)")
    cid, ifname = _attachment(env)
    netns = _netns(env)
    body = {"container_id": cid, "ifname": ifname, "netns": netns, "hairpin": conf.get("hairpinMode", False)}
    status, doc = _call(sock, "POST", "/cni/add", body)
    if status != 200:
        raise _router_error(status, doc, f"ADD {cid}/{ifname}")
    out.write(json.dumps(_result(conf["cniVersion"], conf, doc, ifname, netns)) + "\n")
    return 0


def _del(env: Mapping[str, str], conf: dict[str, Any], sock: str, out: Any) -> int:
    cid, ifname = _attachment(env)
    netns = env.get("CNI_NETNS", "")
    try:
        status, doc = _call(sock, "POST", "/cni/del", {"container_id": cid, "ifname": ifname, "netns": netns})
    except RouterDown:
        _record_pending_del(conf.get("pendingDir", DEFAULT_PENDING_DIR), cid, ifname, netns)
        return 0  # the router completes it when it is back
    if status != 200:
        raise _router_error(status, doc, f"DEL {cid}/{ifname}")
    return 0


def _check(env: Mapping[str, str], conf: dict[str, Any], sock: str, out: Any) -> int:
    cid, ifname = _attachment(env)
    netns = _netns(env)
    prev = conf.get("prevResult")
    if not isinstance(prev, dict):
        raise CniError(ERR_INVALID_CONFIG, "CHECK needs the prevResult of ADD in the configuration")
    ips = prev.get("ips")
    want = ips[0].get("address") if isinstance(ips, list) and ips and isinstance(ips[0], dict) else None
    body = {"container_id": cid, "ifname": ifname, "netns": netns, "ip": want}
    status, doc = _call(sock, "POST", "/cni/check", body)
    if status == 409:
        raise CniError(ERR_CHECK, "CHECK failed", doc.get("error", "") if isinstance(doc, dict) else "")
    if status != 200:
        raise _router_error(status, doc, f"CHECK {cid}/{ifname}")
    return 0


def _status(env: Mapping[str, str], conf: dict[str, Any], sock: str, out: Any) -> int:
    status, doc = _call(sock, "GET", "/cni/status")
    if status != 200 or not isinstance(doc, dict) or not doc.get("ready"):
        code = doc.get("code", ERR_NOT_AVAILABLE) if isinstance(doc, dict) else ERR_NOT_AVAILABLE
        raise CniError(code, "weave-net is not ready", str(doc.get("reason", "")) if isinstance(doc, dict) else "")
    return 0


def _gc(env: Mapping[str, str], conf: dict[str, Any], sock: str, out: Any) -> int:
    valid = conf.get("cni.dev/valid-attachments", [])
    if not isinstance(valid, list):
        raise CniError(ERR_INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    if not all(isinstance(v, dict) and isinstance(v.get("containerID"), str) for v in valid):
        raise CniError(ERR_INVALID_CONFIG, "every cni.dev/valid-attachments entry needs a containerID")
    keep = [{"container_id": v["containerID"], "ifname": str(v.get("ifname") or "eth0")} for v in valid]
    status, doc = _call(sock, "POST", "/cni/gc", {"valid": keep})
    if status != 200:
        raise _router_error(status, doc, "GC")
    return 0


COMMANDS = {"ADD": _add, "DEL": _del, "CHECK": _check, "STATUS": _status, "GC": _gc}


def _fail(version: str, code: int, msg: str, details: str) -> int:
    doc: dict[str, Any] = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        doc["details"] = details
    sys.stdout.write(json.dumps(doc) + "\n")
    return 1


def _version_of(stdin: bytes) -> str:
    """The version to answer errors in: the configuration's when it is one we speak."""
    try:
        version = json.loads(stdin).get("cniVersion") if stdin.strip() else None
    except (ValueError, AttributeError, UnicodeDecodeError):
        version = None
    return version if version in CNI_VERSIONS else CNI_LATEST


def main() -> int:
    stdin = b"" if os.environ.get("CNI_COMMAND") == "VERSION" else sys.stdin.buffer.read()
    version = _version_of(stdin)
    try:
        return run(os.environ, stdin, sys.stdout)
    except CniError as exc:
        return _fail(version, exc.code, exc.msg, exc.details)
    except Exception as exc:  # never a traceback: the runtime shows our msg to the user
        return _fail(version, ERR_INTERNAL, "internal error in weave-net", repr(exc))


if __name__ == "__main__":
    sys.exit(main())
