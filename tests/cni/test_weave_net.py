"""The `weave-net` CNI plugin driven by a real CNI client (libcni, through tests/cni/driver) and by exec with the
spec's environment, against real routers in network-namespace hosts. Pods are network namespaces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pytest

from tests.cni.libcni import REFERENCE_PLUGINS, CniError, Driver, ensure_driver
from tests.helpers import BIN, REPO, poll
from tests.netns.hosts import FAST, RouterProc, netns_hosts, start_mesh
from weave_node.api.client import request
from weave_node.core.cni import pending_name

VERSIONS_LIBCNI = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]  # what Debian's libcni 1.1.2 drives


def render_conflist(version: str, socket: Path, pending: Path) -> dict[str, Any]:
    env = jinja2.Environment(  # noqa: S701 - renders JSON, not HTML
        loader=jinja2.FileSystemLoader(REPO / "weave_node_deploy" / "templates"), undefined=jinja2.StrictUndefined
    )
    text = env.get_template("10-weave.conflist.j2").render(
        cni_version=version, status_socket=str(socket), pending_dir=str(pending)
    )
    doc: dict[str, Any] = json.loads(text)
    return doc


@dataclass
class Node:
    router: RouterProc
    driver: Driver
    workdir: Path
    pods: list[str] = field(default_factory=list)

    @property
    def pending(self) -> Path:
        return self.router.host.workdir / "state" / "cni-pending"  # <router --state-dir>/cni-pending

    def conflist(self, version: str = "1.0.0") -> Path:
        path = self.workdir / f"weave-{version}.conflist"
        path.write_text(json.dumps(render_conflist(version, self.router.socket, self.pending)))
        return path

    def netns(self, name: str) -> str:
        full = f"{self.router.host.netns}-{name}"
        subprocess.run(["ip", "netns", "add", full], check=True)
        self.pods.append(full)
        return f"/run/netns/{full}"

    def allocations(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = request("GET", "/ipam/allocations", socket_path=str(self.router.socket))
        return [r for r in rows if not r["container_id"].startswith("weave:")]

    def veths(self) -> list[str]:
        out = self.router.host.run("ip", "-o", "link").stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if "vethwe" in line]

    def exec_plugin(self, command: str, conf: dict[str, Any] | None, **env: str) -> tuple[int, dict[str, Any]]:
        """Run weave-net as a runtime would: CNI_* variables, the plugin's network configuration on stdin."""
        stdin = json.dumps(conf) if conf is not None else ""
        full_env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_PATH": str(BIN), **env}
        out = subprocess.run(
            ["ip", "netns", "exec", self.router.host.netns, str(self.workdir / "bin" / "weave-net")],
            input=stdin,
            capture_output=True,
            text=True,
            env=full_env,
            timeout=60,
            check=False,
        )
        assert "Traceback" not in out.stderr, out.stderr
        return out.returncode, json.loads(out.stdout) if out.stdout.strip() else {}

    def plugin_conf(self, version: str = "1.1.0", **extra: Any) -> dict[str, Any]:
        doc = render_conflist(version, self.router.socket, self.pending)
        return {"cniVersion": version, "name": doc["name"], **doc["plugins"][0], **extra}


def make_node(router: RouterProc, binary: Path, workdir: Path) -> Node:
    workdir.mkdir(parents=True, exist_ok=True)
    plugins = workdir / "bin"
    plugins.mkdir(exist_ok=True)
    # The production form: the static executable, as the deploys install it.
    subprocess.run([str(BIN / "weave-node"), "install-cni-plugin", "--dir", str(plugins)], check=True)
    driver = Driver(binary, f"{plugins}:{REFERENCE_PLUGINS}", workdir / "cache", netns=router.host.netns)
    return Node(router, driver, workdir)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    binary = ensure_driver()
    base = tmp_path_factory.mktemp("cni")
    with netns_hosts(2, base) as net:
        routers = start_mesh(net)
        nodes = [make_node(r, binary, base / f"node{i}") for i, r in enumerate(routers, 1)]
        try:
            yield nodes
        finally:
            for node in nodes:
                for ns in node.pods:
                    subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


def _ip(result: dict[str, Any]) -> str:
    return str(result["ips"][0]["address"].split("/")[0])


def _ping(node: Node, netns: str, ip: str) -> bool:
    out = subprocess.run(
        ["ip", "netns", "exec", Path(netns).name, "ping", "-c", "1", "-W", "5", ip], capture_output=True, check=False
    )
    return out.returncode == 0


def test_add_check_del_through_libcni_on_one_host_and_across_two(cluster: list[Node]) -> None:
    h1, h2 = cluster
    conf1, conf2 = h1.conflist(), h2.conflist()
    a, b, c = h1.netns("a"), h1.netns("b"), h2.netns("c")
    ra, rb, rc = h1.driver.add(conf1, "pod-a", a), h1.driver.add(conf1, "pod-b", b), h2.driver.add(conf2, "pod-c", c)
    assert ra["cniVersion"] == "1.0.0" and ra["interfaces"][1] == {
        "name": "eth0",
        "mac": ra["interfaces"][1]["mac"],
        "sandbox": a,
    }
    assert ra["routes"] == [{"dst": "0.0.0.0/0", "gw": ra["ips"][0]["gateway"]}]
    assert _ping(h1, a, _ip(rb)) and _ping(h1, a, _ip(rc)) and _ping(h2, c, _ip(ra))
    for node, conf, cid, ns in ((h1, conf1, "pod-a", a), (h1, conf1, "pod-b", b), (h2, conf2, "pod-c", c)):
        node.driver.check(conf, cid, ns)
    assert h1.driver.add(conf1, "pod-a", a)["ips"] == ra["ips"]  # ADD again: same address, nothing new
    h1.driver.delete(conf1, "pod-a", a)
    assert _ip(ra) not in [r["ip"] for r in h1.allocations()]
    links = subprocess.run(
        ["ip", "netns", "exec", Path(a).name, "ip", "-o", "link"], capture_output=True, text=True, check=False
    )
    assert "eth0" not in links.stdout
    h1.driver.delete(conf1, "pod-a", a)  # DEL twice: fine
    with pytest.raises(CniError) as err:
        h1.driver.check(conf1, "pod-a", a)
    # libcni has no cached result after DEL, so it sends no prevResult: the spec requires one for CHECK.
    assert err.value.code == 7 and "CHECK needs the prevResult" in err.value.stderr
    for node, conf, cid, ns in ((h1, conf1, "pod-b", b), (h2, conf2, "pod-c", c)):
        node.driver.delete(conf, cid, ns)
    assert h1.allocations() == [] and h2.allocations() == [] and h1.veths() == [] and h2.veths() == []


@pytest.mark.parametrize("version", VERSIONS_LIBCNI)
def test_every_version_through_libcni(cluster: list[Node], version: str) -> None:
    h1 = cluster[0]
    conf, ns = h1.conflist(version), h1.netns(f"v{version.replace('.', '')}")
    cid = f"ver-{version}"
    result = h1.driver.add(conf, cid, ns)
    assert result["cniVersion"] == version
    assert ("version" in result["ips"][0]) == (version < "1.0.0")
    if version >= "0.4.0":
        h1.driver.check(conf, cid, ns)
    h1.driver.delete(conf, cid, ns)
    assert h1.allocations() == []


def test_version_1_1_0_by_exec_add_check_del_status_gc(cluster: list[Node]) -> None:
    h1 = cluster[0]
    conf = h1.plugin_conf("1.1.0")
    keep, drop = h1.netns("keep"), h1.netns("drop")
    env_keep = {"CNI_CONTAINERID": "keep", "CNI_NETNS": keep, "CNI_IFNAME": "eth0"}
    code, result = h1.exec_plugin("ADD", conf, **env_keep)
    assert code == 0 and result["cniVersion"] == "1.1.0" and result["interfaces"][1]["mtu"] == 1450
    code, _ = h1.exec_plugin("CHECK", {**conf, "prevResult": result}, **env_keep)
    assert code == 0
    code, _ = h1.exec_plugin("ADD", conf, CNI_CONTAINERID="drop", CNI_NETNS=drop, CNI_IFNAME="eth0")
    assert code == 0
    assert h1.exec_plugin("STATUS", conf) == (0, {})
    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert h1.exec_plugin("GC", gc_conf)[0] == 0
    assert [r["container_id"] for r in h1.allocations()] == ["keep"]
    assert len(h1.veths()) == 1
    code, _ = h1.exec_plugin("DEL", conf, **env_keep)
    assert code == 0 and h1.allocations() == [] and h1.veths() == []
    # STATUS when the router cannot be reached: 50, "not available"
    code, err = h1.exec_plugin("STATUS", {**conf, "socket": "/nonexistent/weave.sock"})
    assert code == 1 and err["code"] == 50


def test_portmap_chained_after_weave_net_publishes_a_port(cluster: list[Node]) -> None:
    """From the host, from a pod on the same host (hairpin: portmap masquerades it) and from a pod on another host;
    on these bare hosts bridged pod traffic skips iptables (bridge-nf-call-iptables 0), which portmap must not need."""
    h1, h2 = cluster[0], cluster[1]
    assert h1.router.host.run("sysctl", "-n", "net.bridge.bridge-nf-call-iptables").stdout.strip() == "0"
    ns = h1.netns("web")
    driver = Driver(
        h1.driver.binary,
        h1.driver.cni_path,
        h1.driver.cache_dir,
        netns=h1.driver.netns,
        extra_env={"CNIDRIVER_PORTMAPS": json.dumps([{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}])},
    )
    conf = h1.conflist()
    driver.add(conf, "web", ns)
    clients = [(h1, h1.netns("near")), (h2, h2.netns("far"))]
    for node, client_ns in clients:
        node.driver.add(node.conflist(), Path(client_ns).name, client_ns)
    server = subprocess.Popen(
        ["ip", "netns", "exec", Path(ns).name, "python3", "-c", _SERVER, "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        host = h1.router.host
        out = host.run("python3", "-c", _CLIENT, host.address, "18080")
        assert out.stdout.strip() == "hello from the pod"
        for _node, client_ns in clients:
            out = subprocess.run(
                ["ip", "netns", "exec", Path(client_ns).name, "python3", "-c", _CLIENT, host.address, "18080"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert out.stdout.strip() == "hello from the pod", (client_ns, out.stderr)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
        driver.delete(conf, "web", ns)
        for node, client_ns in clients:
            node.driver.delete(node.conflist(), Path(client_ns).name, client_ns)
    assert "18080" not in h1.router.host.run("iptables-save", "-t", "nat").stdout  # portmap cleaned up too


_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(8); print("listening", flush=True)
for _ in range(int(sys.argv[1])):
    c, _ = s.accept(); c.sendall(b"hello from the pod"); c.close()
"""
_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
print(c.recv(100).decode())
"""


def test_bad_input_gets_the_right_code_and_creates_nothing(cluster: list[Node]) -> None:
    h1 = cluster[0]
    ns = h1.netns("bad")
    ok = {"CNI_CONTAINERID": "bad", "CNI_NETNS": ns, "CNI_IFNAME": "eth0"}
    conf = h1.plugin_conf("1.0.0")
    cases: list[tuple[str, dict[str, Any] | None, dict[str, str], int]] = [
        ("ADD", None, ok, 6),  # empty stdin
        ("ADD", {"cniVersion": "1.0.0", "name": "weave", "type": "weave-net", "socket": 5}, ok, 7),
        ("ADD", conf, {k: v for k, v in ok.items() if k != "CNI_NETNS"}, 4),
        ("EXPLODE", conf, ok, 4),
        ("ADD", {**conf, "cniVersion": "9.9.9"}, ok, 1),
        ("ADD", conf, {**ok, "CNI_NETNS": "/run/netns/does-not-exist"}, 4),
        ("ADD", conf, {**ok, "CNI_CONTAINERID": "bad id/with slash"}, 4),
        ("CHECK", {**conf, "cniVersion": "0.3.1"}, ok, 1),
        ("GC", conf, ok, 1),  # GC needs 1.1.0
    ]
    for command, stdin_conf, env, want in cases:
        code, err = h1.exec_plugin(command, stdin_conf, **env)
        assert (code, err.get("code")) == (1, want), (command, env, err)
        assert err["msg"]
    out = subprocess.run(
        ["ip", "netns", "exec", h1.router.host.netns, str(h1.workdir / "bin" / "weave-net")],
        input="{not json",
        capture_output=True,
        text=True,
        env={"CNI_COMMAND": "ADD", **ok},
        check=False,
    )
    assert json.loads(out.stdout)["code"] == 6 and "Traceback" not in out.stderr
    assert h1.allocations() == [] and h1.veths() == []


def test_fifty_parallel_adds_then_dels_leave_nothing(cluster: list[Node]) -> None:
    h1 = cluster[0]
    conf = h1.conflist()
    pods = [(f"par-{i}", h1.netns(f"p{i}")) for i in range(50)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda p: h1.driver.add(conf, p[0], p[1]), pods))
    ips = [_ip(r) for r in results]
    assert len(set(ips)) == 50
    first_ns = pods[0][1]
    assert all(_ping(h1, first_ns, ip) for ip in ips[1:])
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda p: h1.driver.delete(conf, p[0], p[1]), pods))
    assert h1.allocations() == [] and h1.veths() == []


def test_del_while_the_router_is_down_is_completed_when_it_returns(tmp_path: Path) -> None:
    binary = ensure_driver()
    with netns_hosts(1, tmp_path) as net:
        r = net.start_router(1, *FAST, datapath=True)
        node = make_node(r, binary, tmp_path / "node")
        conf = node.conflist()
        try:
            ns = node.netns("orphan")
            ip = _ip(node.driver.add(conf, "orphan", ns))
            r.proc.send_signal(signal.SIGKILL)
            r.proc.wait()
            node.driver.delete(conf, "orphan", ns)  # succeeds: recorded for the router
            assert [p.name for p in node.pending.glob("*.json")] == [pending_name("orphan", "eth0")]
            with pytest.raises(CniError) as err:
                node.driver.add(conf, "another", node.netns("another"))
            assert err.value.code == 11  # try again later
            r = net.start_router(1, *FAST, datapath=True)
            node.router = r
            poll(lambda: not list(node.pending.glob("*.json")), timeout=20, what="the pending DEL completed")
            assert ip not in [a["ip"] for a in node.allocations()] and node.veths() == []
            assert "completed a CNI DEL recorded while the router was down: orphan/eth0" in r.log_text()
        finally:
            for ns_name in node.pods:
                subprocess.run(["ip", "netns", "delete", ns_name], capture_output=True, check=False)


def test_a_host_without_python_gets_its_pods_networked(cluster: list[Node], tmp_path: Path) -> None:
    """The plugin in a root filesystem with nothing but itself (no python3, no C library, no shell): ADD, CHECK
    and DEL through it, in a mount namespace where only the router's socket and the pods' namespaces are shared."""
    h1, h2 = cluster
    root = tmp_path / "root"
    (root / "opt/cni/bin").mkdir(parents=True)
    (root / "opt/cni/bin/weave-net").write_bytes((h1.workdir / "bin" / "weave-net").read_bytes())
    (root / "opt/cni/bin/weave-net").chmod(0o755)
    sock_dir = h1.router.socket.parent
    for shared in (sock_dir, Path("/run/netns")):
        (root / shared.relative_to("/")).mkdir(parents=True, exist_ok=True)
    assert not any(p.name.startswith("python") or p.name in ("sh", "libc.so.6") for p in root.rglob("*"))
    mounts = " && ".join(f"mount --rbind {d} {root}{d}" for d in (sock_dir, "/run/netns"))

    def chrooted(command: str, conf: dict[str, Any], **env: str) -> tuple[int, dict[str, Any]]:
        out = subprocess.run(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"{mounts} && exec chroot {root} /opt/cni/bin/weave-net",
            ],
            input=json.dumps(conf),
            env={"CNI_COMMAND": command, "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.stderr == "", out.stderr
        return out.returncode, json.loads(out.stdout) if out.stdout.strip() else {}

    ns, other = h1.netns("nopython"), h2.netns("peer")
    conf = h1.plugin_conf("1.1.0")
    rc, result = chrooted("ADD", conf, CNI_CONTAINERID="nopython", CNI_NETNS=ns)
    assert rc == 0, result
    peer = h2.driver.add(h2.conflist(), "peer", other)
    assert _ping(h1, ns, _ip(peer)) and _ping(h2, other, _ip(result))
    rc, doc = chrooted("CHECK", {**conf, "prevResult": result}, CNI_CONTAINERID="nopython", CNI_NETNS=ns)
    assert rc == 0, doc
    rc, doc = chrooted("DEL", conf, CNI_CONTAINERID="nopython", CNI_NETNS=ns)
    assert rc == 0, doc
    h2.driver.delete(h2.conflist(), "peer", other)
    assert h1.allocations() == [] and h1.veths() == []


def test_a_failed_add_is_rolled_back(cluster: list[Node]) -> None:
    h1 = cluster[0]
    ns = h1.netns("taken")
    name = Path(ns).name
    # The pod already has an eth0 (a veth of its own): plumbing fails after the address was allocated.
    subprocess.run(["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "other"], check=True)
    with pytest.raises(CniError) as err:
        h1.driver.add(h1.conflist(), "taken", ns)
    assert err.value.code == 100 and "ADD taken/eth0 failed" in err.value.stderr
    assert h1.allocations() == [] and h1.veths() == []  # address released, no host end left


def test_the_cni_endpoints_are_not_served_on_tcp(cluster: list[Node]) -> None:
    h1 = cluster[0]
    code = (
        "import urllib.request, urllib.error\n"
        "req = urllib.request.Request('http://127.0.0.1:6784/cni/gc', data=b'{\"valid\": []}', method='POST')\n"
        "try:\n    urllib.request.urlopen(req, timeout=10)\nexcept urllib.error.HTTPError as e:\n    print(e.code)\n"
    )
    assert h1.router.host.run("python3", "-c", code).stdout.strip() == "403"
    get = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:6784/status', timeout=10).status)"
    assert h1.router.host.run("python3", "-c", get).stdout.strip() == "200"  # the read-only status is still there


def test_a_re_add_wins_over_an_older_pending_del(cluster: list[Node]) -> None:
    h1 = cluster[0]
    conf, ns = h1.conflist(), h1.netns("again")
    stale = h1.pending / pending_name("again", "eth0")
    stale.write_text(json.dumps({"container_id": "again", "ifname": "eth0", "netns": ""}))
    result = h1.driver.add(conf, "again", ns)  # the ADD completes the older DEL first, then adds
    assert not stale.exists()
    # A full scan of the pending directory later, the pod is still there with its address.
    marker = h1.pending / pending_name("marker", "eth0")
    marker.write_text(json.dumps({"container_id": "marker", "ifname": "eth0", "netns": ""}))
    poll(lambda: not marker.exists(), timeout=20, what="the next pending scan")
    assert _ip(result) in [a["ip"] for a in h1.allocations()]
    h1.driver.check(conf, "again", ns)
    h1.driver.delete(conf, "again", ns)


def test_check_names_what_differs_from_add(cluster: list[Node]) -> None:
    h1 = cluster[0]
    conf, ns = h1.conflist(), h1.netns("drift")
    result = h1.driver.add(conf, "drift", ns)
    subprocess.run(["ip", "-n", Path(ns).name, "link", "set", "eth0", "mtu", "1300"], check=True)
    subprocess.run(["ip", "-n", Path(ns).name, "addr", "flush", "dev", "eth0"], check=True)
    with pytest.raises(CniError) as err:
        h1.driver.check(conf, "drift", ns)
    assert err.value.code == 101
    assert (
        f"address {result['ips'][0]['address']} missing" in err.value.stderr
        and "MTU 1300, not 1450" in err.value.stderr
    )
    h1.driver.delete(conf, "drift", ns)
