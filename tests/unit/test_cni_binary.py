"""The static `weave-net` plugin (weave_node/cni/weave-net/main.go) on its own: what it shares with the router, its
HTTP client against a unix socket serving canned answers, the installer, and that it needs no interpreter.
The plugin against real routers, through libcni, is tests/cni/test_weave_net.py."""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import run_cli
from weave_node.cni import gobuild
from weave_node.core.cni import CNI_VERSIONS, pending_name
from weave_node.core.facts import DEFAULT_PENDING_DIR, DEFAULT_STATUS_SOCKET


@pytest.fixture(scope="module")
def plugin() -> Path:
    return gobuild.plugin()


def _run(plugin: Path, command: str, conf: object, **env: str) -> tuple[int, dict[str, object]]:
    full = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/self/ns/net"}
    full.update(env)
    out = subprocess.run(
        [str(plugin)],
        input=conf if isinstance(conf, str) else json.dumps(conf),
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.stderr == "", out.stderr  # never a panic trace
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else {}


def test_what_the_binary_shares_with_the_router_is_the_same() -> None:
    source = gobuild.SOURCE.read_text()
    listed = re.search(r"var versions = \[\]string\{([^}]*)\}", source)
    assert listed and [v.strip().strip('"') for v in listed.group(1).split(",")] == list(CNI_VERSIONS)
    assert f'latest            = "{CNI_VERSIONS[-1]}"' in source
    assert f'defaultSocket     = "{DEFAULT_STATUS_SOCKET}"' in source
    assert f'defaultPendingDir = "{DEFAULT_PENDING_DIR}"' in source


def test_version_and_usage_errors(plugin: Path) -> None:
    rc, doc = _run(plugin, "VERSION", "")
    assert rc == 0 and doc == {"cniVersion": "1.1.0", "supportedVersions": list(CNI_VERSIONS)}
    for command, conf, code, words in [
        ("", {}, 4, "CNI_COMMAND is not set"),
        ("FROB", {}, 4, "unknown CNI_COMMAND 'FROB'"),
        ("ADD", "", 6, "no network configuration"),
        ("ADD", "{not json", 6, "not valid JSON"),
        ("ADD", [1], 7, "must be a JSON object"),
        ("ADD", {"name": "n"}, 7, "cniVersion is missing"),
        ("ADD", {"cniVersion": "0.2.0"}, 1, "incompatible CNI version 0.2.0"),
        ("ADD", {"cniVersion": "1.0.0", "socket": "relative"}, 7, "'socket' must be an absolute path"),
        ("ADD", {"cniVersion": "1.0.0", "hairpinMode": "yes"}, 7, "'hairpinMode' must be true or false"),
        ("CHECK", {"cniVersion": "0.3.1"}, 1, "CHECK is not defined for cniVersion 0.3.1"),
        ("GC", {"cniVersion": "1.0.0"}, 1, "GC needs cniVersion 1.1.0"),
        ("ADD", {"cniVersion": "1.0.0", "prevResult": {}}, 7, "must be the first plugin"),
    ]:
        rc, doc = _run(plugin, command, conf)
        assert rc == 1 and doc["code"] == code and words in str(doc["msg"]), (command, conf, doc)
        # the error in the configuration's version when it is one we speak
        version = conf.get("cniVersion") if isinstance(conf, dict) else None
        assert doc["cniVersion"] == (version if version in CNI_VERSIONS else "1.1.0")
    rc, doc = _run(plugin, "ADD", {"cniVersion": "1.0.0"}, CNI_CONTAINERID="-bad/id")
    assert rc == 1 and doc["code"] == 4 and doc["details"] == "-bad/id"
    rc, doc = _run(plugin, "ADD", {"cniVersion": "1.0.0"}, CNI_IFNAME="a/b")
    assert rc == 1 and doc["code"] == 4 and "CNI_IFNAME" in str(doc["msg"])
    rc, doc = _run(plugin, "ADD", {"cniVersion": "1.0.0"}, CNI_NETNS="/nonexistent/ns")
    assert rc == 1 and doc["code"] == 4 and "does not exist" in str(doc["msg"])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, list[bytes], list[bytes]]]:
    """A unix socket that answers each connection with the next canned answer, and keeps what it was asked."""
    path = tmp_path / "router.sock"
    answers: list[bytes] = []
    asked: list[bytes] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
                while len(body) < length:
                    body += conn.recv(65536)
                asked.append(head + b"\r\n\r\n" + body)
                conn.sendall(answers.pop(0) if answers else b"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, answers, asked
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(timeout=10)


ADD_ANSWER = {
    "mac": "02:00:00:00:00:01",
    "mtu": 1376,
    "cidr": "10.32.0.5/12",
    "gateway": "10.32.0.1",
    "host_ifname": "vethwepl1",
    "host_mac": "02:00:00:00:00:02",
    "dns": {"nameservers": ["10.32.0.1"], "search": ["weave.local"]},  # the router's server
}


def _http(status: str, body: bytes, chunked: bool = False) -> bytes:
    if chunked:
        pieces = [body[:5], body[5:]]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"
        return f"HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + framed
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


@pytest.mark.parametrize("version", CNI_VERSIONS)
def test_add_asks_the_router_and_prints_the_result_of_the_requested_version(
    plugin: Path, server: tuple[Path, list[bytes], list[bytes]], version: str
) -> None:
    sock, answers, asked = server
    answers.append(_http("200 OK", json.dumps(ADD_ANSWER).encode(), chunked=version == "1.0.0"))
    conf = {"cniVersion": version, "name": "weave", "type": "weave-net", "socket": str(sock), "hairpinMode": True}
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1;malformed"
    rc, doc = _run(plugin, "ADD", {**conf, "dns": {"nameservers": ["10.96.0.10"]}}, CNI_ARGS=args)
    assert rc == 0, doc
    request = asked[0].decode()
    assert request.startswith("POST /cni/add HTTP/1.1\r\n")
    body = json.loads(request.split("\r\n\r\n", 1)[1])
    assert body == {
        "container_id": "c1", "ifname": "eth0", "netns": "/proc/self/ns/net", "hairpin": True,
        "args": {"K8S_POD_NAME": "web", "K8S_POD_NAMESPACE": "shop"},  # the pod's name for the router's DNS
    }  # fmt: skip
    pod = {"name": "eth0", "mac": ADD_ANSWER["mac"], "sandbox": "/proc/self/ns/net"}
    ip = {"address": "10.32.0.5/12", "gateway": "10.32.0.1", "interface": 1}
    expected = {
        "cniVersion": version,
        "interfaces": [
            {"name": "vethwepl1", "mac": "02:00:00:00:00:02"},
            pod | ({"mtu": 1376} if version == "1.1.0" else {}),
        ],
        "ips": [ip | ({"version": "4"} if version < "1.0.0" else {})],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}],
        "dns": {"nameservers": ["10.96.0.10"]},  # the network configuration's own wins
    }
    assert doc == expected
    answers.append(_http("200 OK", json.dumps(ADD_ANSWER).encode()))
    rc, doc = _run(plugin, "ADD", conf)  # without one: the router's server
    assert rc == 0 and doc["dns"] == ADD_ANSWER["dns"], doc
    assert json.loads(asked[1].decode().split("\r\n\r\n", 1)[1])["args"] == {}


@pytest.mark.parametrize(
    ("answer", "code", "words"),
    [
        (_http("503 Service Unavailable", b'{"error": "IPAM is not ready"}'), 11, "try again later"),
        (_http("400 Bad Request", b'{"error": "no"}'), 7, "refused"),
        (_http("500 Internal Server Error", b'{"error": "netlink said no"}'), 100, "ADD c1/eth0 failed"),
        (_http("200 OK", b"not json"), 999, "not JSON"),
        (b"garbage\r\n\r\n", 999, "malformed HTTP response"),
        (b"", 11, "did not answer"),  # the router closed the connection: it may have done the work
    ],
)
def test_router_answers_map_to_the_spec_s_codes(
    plugin: Path, server: tuple[Path, list[bytes], list[bytes]], answer: bytes, code: int, words: str
) -> None:
    sock, answers, _ = server
    answers.append(answer)
    rc, doc = _run(plugin, "ADD", {"cniVersion": "1.0.0", "socket": str(sock)})
    assert rc == 1 and doc["code"] == code and words in str(doc["msg"]), doc


def test_a_del_while_the_router_is_down_is_recorded_durably_under_the_router_s_name(
    plugin: Path, tmp_path: Path
) -> None:
    pending = tmp_path / "pending"
    conf = {"cniVersion": "1.0.0", "socket": str(tmp_path / "nobody.sock"), "pendingDir": str(pending)}
    rc, doc = _run(plugin, "DEL", conf, CNI_CONTAINERID="pod-7", CNI_IFNAME="eth1", CNI_NETNS="")
    assert rc == 0, doc
    (record,) = pending.iterdir()
    assert record.name == pending_name("pod-7", "eth1")  # the router finds it under its own name
    assert json.loads(record.read_text()) == {"container_id": "pod-7", "ifname": "eth1", "netns": ""}
    assert record.stat().st_mode & 0o777 == 0o600 and pending.stat().st_mode & 0o777 == 0o700
    pending.chmod(0o777)  # a directory others can write is refused, and nothing is written
    rc, doc = _run(plugin, "DEL", conf, CNI_CONTAINERID="pod-8")
    assert rc == 1 and doc["code"] == 7 and len(list(pending.iterdir())) == 1
    rc, doc = _run(plugin, "ADD", conf)  # the others say "try again later"; STATUS says "not available"
    assert rc == 1 and doc["code"] == 11 and "not running" in str(doc["msg"])
    rc, doc = _run(plugin, "STATUS", {**conf, "cniVersion": "1.1.0"})
    assert rc == 1 and doc["code"] == 50


def _interpreter(elf: bytes) -> bool:
    """Whether an ELF64 executable names a program interpreter (PT_INTERP): a dynamic loader it needs."""
    assert elf[:4] == b"\x7fELF" and elf[4] == 2, "not a 64-bit ELF file"
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return any(struct.unpack_from("<I", elf, phoff + i * phentsize)[0] == 3 for i in range(phnum))


def test_install_cni_plugin_writes_the_static_executable(tmp_path: Path) -> None:
    out = run_cli("weave-node", "install-cni-plugin", "--dir", str(tmp_path), check=True)
    installed = tmp_path / "weave-net"
    assert out.stdout.strip() == f"installed {installed}"
    assert installed.stat().st_mode & 0o777 == 0o755
    data = installed.read_bytes()
    assert not _interpreter(data)  # static: no loader, no C library, no Python needed on the node
    assert data == gobuild.plugin().read_bytes()
    version = subprocess.run([str(installed)], env={"CNI_COMMAND": "VERSION"}, capture_output=True, check=True)
    assert json.loads(version.stdout)["supportedVersions"][-1] == "1.1.0"
    again = run_cli("weave-node", "install-cni-plugin", "--dir", str(tmp_path), check=True)
    assert again.stdout.strip() == f"{installed} is up to date"
    # --check (what the rollout asks before it runs the installer) changes nothing and says whether it would.
    assert run_cli("weave-node", "install-cni-plugin", "--dir", str(tmp_path), "--check").returncode == 0
    installed.chmod(0o775)
    stale = run_cli("weave-node", "install-cni-plugin", "--dir", str(tmp_path), "--check")
    assert stale.returncode == 1 and str(installed) in stale.stdout and installed.stat().st_mode & 0o777 == 0o775
    assert (
        run_cli("weave-node", "install-cni-plugin", "--dir", str(tmp_path)).stdout.strip() == f"installed {installed}"
    )
    assert installed.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["weave-net"]  # no temp file left


def test_the_build_is_reproducible(tmp_path: Path) -> None:
    """The same source gives the same bytes wherever it is built (the wheel's binary = a checkout's)."""
    elsewhere = tmp_path / "elsewhere" / "src" / "main.go"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(gobuild.SOURCE.read_bytes())
    built = gobuild.build(tmp_path / "out" / "weave-net", source=elsewhere)
    assert built.read_bytes() == gobuild.plugin().read_bytes()
