"""The verify suite of a rolled-out node, in testinfra: what the pyinfra E2E checks on the lab, and what Molecule's
verify step reuses for the Ansible rollout. Each function takes testinfra hosts and asserts."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from tests.helpers import poll
from weave_node.cni import gobuild

PLUGIN = gobuild.plugin().read_bytes()  # what every installer writes (the wheel's build of the same source)


def node_is_installed(host: Any, *, password: bool = False) -> None:
    service = host.service("weave-node")
    assert service.is_running and service.is_enabled
    unit = host.file("/etc/systemd/system/weave-node.service")
    assert unit.mode == 0o644 and unit.contains("ProtectSystem=strict")
    env = host.file("/etc/weave-node/weave-node.env")
    assert env.mode == 0o644 and env.contains("IPALLOC_RANGE=")
    mesh = host.file("/etc/weave-node/mesh.env")
    assert mesh.mode == 0o644 and mesh.contains("^WEAVE_PEERS=")
    if password:
        pw = host.file("/etc/weave-node/password")
        assert (pw.mode, pw.user, pw.group) == (0o600, "root", "root")
    plugin = host.file("/opt/cni/bin/weave-net")
    assert plugin.mode == 0o755 and plugin.sha256sum == hashlib.sha256(PLUGIN).hexdigest()
    for name in ("loopback", "portmap"):
        target = host.file(f"/opt/cni/bin/{name}").linked_to
        assert target == f"/usr/lib/cni/{name}" and host.file(target).mode & 0o111
    conflist = json.loads(host.file("/etc/cni/net.d/10-weave.conflist").content_string)
    assert conflist["plugins"][0]["type"] == "weave-net"
    assert host.file("/opt/weave-node/venv/bin/weave-node").mode & 0o111
    assert host.file("/etc/modules-load.d/weave-node.conf").content_string.split() == ["vxlan", "br_netfilter", "tun"]
    assert "net.ipv4.ip_forward = 1" in host.file(SYSCTL_DROP_IN).content_string.splitlines()


SYSCTL_DROP_IN = "/etc/sysctl.d/90-weave-node.conf"
OURS = [  # every file, directory and link the rollout makes (the IPAM state apart: it stays unless asked)
    "/etc/systemd/system/weave-node.service",
    "/etc/weave-node",
    "/opt/weave-node",
    "/opt/cni/bin/weave-net",
    "/opt/cni/bin/loopback",
    "/opt/cni/bin/portmap",
    "/opt/cni/bin/bandwidth",
    "/etc/cni/net.d/10-weave.conflist",
    "/etc/modules-load.d/weave-node.conf",
    SYSCTL_DROP_IN,
]


def nothing_of_ours_is_left(host: Any, *, kept: tuple[str, ...] = ()) -> None:
    """After the removal: no unit, file, link, bridge, VXLAN device, TAP, iptables chain or rule of ours (`kept`:
    paths that are someone else's by now, e.g. a real plugin binary put where we had linked Debian's)."""
    left = [path for path in OURS if path not in kept and host.file(path).exists]
    assert not left, f"still there: {left}"
    assert host.run("systemctl cat weave-node.service").rc != 0, "systemd still knows weave-node.service"
    for link in ("weave", "vxlan-6784", "weave-sleeve"):
        assert host.run(f"ip -o link show {link}").rc != 0, f"link {link} is still there"
    rules = host.check_output("iptables-save")
    assert "WEAVE" not in rules, [line for line in rules.splitlines() if "WEAVE" in line]


def router_sees_peers(host: Any, peers: int) -> bool:
    out = host.run("/opt/weave-node/venv/bin/weave-node status --json")
    if out.rc != 0:
        return False
    doc = json.loads(out.stdout)
    established = sum(1 for c in doc["connections"] if c["state"] == "established")
    return bool(established == peers and doc["ipam"]["ready"] and doc["datapath"]["bridge_address"])


CONF = (
    'python3 -c \'import json; d = json.load(open("/etc/cni/net.d/10-weave.conflist")); p = d["plugins"][0]; '
    'p.update(cniVersion=d["cniVersion"], name=d["name"]); print(json.dumps(p))\''
)


def add_pod(host: Any, pod: str, name: str = "") -> str:
    """A pod (network namespace) through the installed plugin and conflist, as a runtime runs it; its address.
    With `name`, named as containerd's CRI names pods (K8S_POD_NAME in CNI_ARGS)."""
    return add_pod_ips(host, pod, name)[0]


def add_pod_ips(host: Any, pod: str, name: str = "") -> list[str]:
    """add_pod, with every address the pod got (IPv4 first; an IPv6 one too with a dual-stack range)."""
    host.run_test(f"ip netns list | grep -qw {pod} || ip netns add {pod}")
    env = f"CNI_COMMAND=ADD CNI_CONTAINERID={pod} CNI_NETNS=/run/netns/{pod} CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin"
    if name:
        env += f" CNI_ARGS='IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}'"
    result = json.loads(host.check_output(f"{CONF} | {env} /opt/cni/bin/weave-net"))
    return [str(ip["address"].split("/")[0]) for ip in result["ips"]]


RESOLVE = (
    "import socket, struct, sys; name = sys.argv[1]; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.settimeout(3); q = struct.pack('>6H', 9, 0x100, 1, 0, 0, 0) + b''.join(bytes([len(l)]) + l.encode() "
    "for l in name.split('.')) + b'\\0\\0\\1\\0\\1'; s.sendto(q, (sys.argv[2], 53)); d = s.recv(512); "
    "print(socket.inet_ntoa(d[-4:]) if d[3] & 15 == 0 and d[7] else 'none')"
)


def names_resolve(hosts: dict[str, Any], pod: str, ips: dict[str, str]) -> bool:
    """From the pod on each host, through that host's DNS server (the CNI result's nameserver, the bridge's
    address), every pod's name gives its address."""
    for host in hosts.values():
        server = json.loads(host.check_output("/opt/weave-node/venv/bin/weave-node status --json"))["dns"]["address"]
        for dst, ip in ips.items():
            out = host.run(f'ip netns exec {pod} python3 -c "{RESOLVE}" {pod}-{dst}.weave.local {server}')
            if out.stdout.strip() != ip:
                return False
    return True


def del_pod(host: Any, pod: str) -> None:
    env = f"CNI_COMMAND=DEL CNI_CONTAINERID={pod} CNI_NETNS=/run/netns/{pod} CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin"
    host.check_output(f"{CONF} | {env} /opt/cni/bin/weave-net")
    host.run(f"ip netns delete {pod}")


def pods_reach_each_other(hosts: dict[str, Any], pod: str, ips: dict[str, str], within: float = 15.0) -> None:
    """Every pod reaches every other, each pair within `within` seconds (a rollout that restarted every router
    at once may still be settling each peer's path: pending, fastdp, then direct)."""
    for src, host in hosts.items():
        for dst, ip in ips.items():
            deadline, out = time.monotonic() + within, None
            while out is None or (out.rc != 0 and time.monotonic() < deadline):
                out = host.run(f"ip netns exec {pod} ping -c 1 -W 2 {ip}")
            assert out.rc == 0, f"{src} -> {dst} ({ip}) not within {within:g} s: {out.stdout}"


def ipv6_resolves(hosts: dict[str, Any], pod: str, ips6: dict[str, str]) -> bool:
    """Dual-stack: every pod's name has its IPv6 address too (AAAA, through the host's DNS server)."""
    for host in hosts.values():
        server = json.loads(host.check_output("/opt/weave-node/venv/bin/weave-node status --json"))["dns"]["address"]
        for dst, ip in ips6.items():
            script = f"import dns.resolver as r; x = r.Resolver(configure=False); x.nameservers = ['{server}']; "
            script += f"print(' '.join(a.to_text() for a in x.resolve('{pod}-{dst}.weave.local', 'AAAA')))"
            out = host.run(f'ip netns exec {pod} /opt/weave-node/venv/bin/python -c "{script}"')
            if out.stdout.strip() != ip:
                return False
    return True


MCAST_RECV = (
    "import socket, struct; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('', 5353)); "
    "s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, "
    "struct.pack('4s4s', socket.inet_aton('239.1.2.3'), socket.inet_aton('0.0.0.0'))); s.settimeout(20); "
    "print(s.recvfrom(100)[0].decode())"
)
MCAST_SEND = (
    "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 4)\n"
    "for _ in range(20):\n    s.sendto(b'weave-multicast', ('239.1.2.3', 5353)); time.sleep(0.25)"
)


def multicast_crosses_hosts(receiver: Any, sender: Any, pod: str) -> None:
    """A receiver joined on one host gets a datagram a pod on another host sends to the group."""
    receiver.run(f'ip netns exec {pod} timeout 25 python3 -c "{MCAST_RECV}" > /tmp/mcast.out 2>&1 &')
    sender.check_output(f'ip netns exec {pod} python3 -c "{MCAST_SEND}"')
    assert receiver.file("/tmp/mcast.out").content_string.strip() == "weave-multicast"


def pod_reaches_outside(host: Any, pod: str, outside: str) -> None:
    out = host.run(f"ip netns exec {pod} ping -c 2 -W 5 {outside}")
    assert out.rc == 0, out.stdout


def _multicast(receiver: Any, sender: Any, pod: str) -> bool:
    try:
        multicast_crosses_hosts(receiver, sender, pod)
    except AssertionError:
        return False
    return True


def _multicast6(receiver: Any, sender: Any, pod: str) -> bool:
    """IPv6 multicast: the all-nodes group (ff02::1) pinged from the sender's pod is answered by the receiver's
    pod on another host (its link-local address among the replies)."""
    link = json.loads(receiver.check_output(f"ip netns exec {pod} ip -j -6 addr show dev eth0 scope link"))
    found = [a["local"] for a in link[0]["addr_info"] if "local" in a and not a.get("tentative")]
    out = sender.run(f"ip netns exec {pod} ping -6 -c 3 -i 0.3 -w 5 ff02::1%eth0")
    return bool(found) and f"from {found[0]}" in out.stdout


def suite(hosts: dict[str, Any], outside: str | tuple[str, ...], pod: str = "verify") -> None:
    """Everything, on every host: installed as it should be, every router sees the others, a pod on each host
    reaches every other pod (on each family its range has: IPv4, IPv6 or both) and `outside` (through the
    masquerade; each address of a family the pods have), resolves every pod's name through its host's DNS
    server (A, AAAA), multicast crosses hosts (IPv4's, or IPv6's with an IPv6 range alone). Cleans up its pods."""
    for host in hosts.values():
        node_is_installed(host)
        poll(lambda h=host: router_sees_peers(h, len(hosts) - 1), timeout=30, what="every router sees its peers")
    both = {name: add_pod_ips(host, pod, f"{pod}-{name}") for name, host in hosts.items()}
    ips = {name: a for name, got in both.items() for a in got if ":" not in a}
    ips6 = {name: a for name, got in both.items() for a in got if ":" in a}
    try:
        for family in (ips, ips6):  # every pod has an address of each family of the range, or none has
            assert not family or len(family) == len(hosts), both
        assert ips or ips6, both
        pods_reach_each_other(hosts, pod, ips)
        pods_reach_each_other(hosts, pod, ips6)
        if ips:
            poll(lambda: names_resolve(hosts, pod, ips), timeout=10, what="every pod's name from every pod (DNS)")
        if ips6:
            poll(lambda: ipv6_resolves(hosts, pod, ips6), timeout=10, what="every pod's AAAA from every pod")
        names = sorted(hosts)
        receiver, sender = hosts[names[1 % len(names)]], hosts[names[-1]]
        multicast = _multicast if ips else _multicast6
        poll(lambda: multicast(receiver, sender, pod), timeout=60, what="a multicast datagram across hosts")
        for address in (outside,) if isinstance(outside, str) else outside:
            if ips6 if ":" in address else ips:  # an outside address of a family the pods have
                pod_reaches_outside(hosts[names[0]], pod, address)
    finally:
        for host in hosts.values():
            del_pod(host, pod)
