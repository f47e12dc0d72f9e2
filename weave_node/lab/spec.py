"""What a lab looks like: names, namespaces and addresses (pure, no I/O).

Every lab lives in namespaces of its own: an underlay namespace holding the bridge `br0`, and one namespace per
host. Addresses come from 198.18.0.0/15 (RFC 2544, reserved for benchmarking), or for an IPv6-only lab from
2001:db8:18::/64 (RFC 3849, documentation), and only ever exist inside those namespaces, so two labs (or a lab
and the machine) never clash.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from weave_node.core.errors import ConfigError

MAX_HOSTS = 200
MAX_VMS = 8  # each is an emulated CPU (~0.4 GB, a busy core while it boots)
UNDERLAY_NET = ipaddress.IPv4Network("198.18.0.0/24")
UNDERLAY_GATEWAY = ipaddress.IPv4Address("198.18.0.254")
UNDERLAY_NET6 = ipaddress.IPv6Network("2001:db8:18::/64")  # an IPv6-only lab's underlay
UNDERLAY_GATEWAY6 = ipaddress.IPv6Address("2001:db8:18::fe")
HOST_PREFIX = "node"
_LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")


@dataclass(frozen=True)
class HostSpec:
    name: str  # hostname inside the lab and in the inventory, e.g. node1
    index: int  # 1-based
    machine: str  # systemd-nspawn machine name, unique across labs
    netns: str  # the host's network namespace
    address: ipaddress.IPv4Address | ipaddress.IPv6Address  # on eth0, inside the host's namespace
    underlay_port: str  # the veth end on the underlay bridge
    address6: ipaddress.IPv6Address | None = None  # a dual-stack lab: its IPv6 address beside `address`
    vm: bool = False  # a QEMU VM with Debian's kernel (vm.py), not a systemd-nspawn container; no netns of its own


@dataclass(frozen=True)
class LabSpec:
    name: str
    hosts: tuple[HostSpec, ...]
    ipv6: bool = False  # an IPv6-only underlay: the hosts have no IPv4 address at all
    dual: bool = False  # a dual-stack underlay: IPv4 addresses (SSH, the inventory) and IPv6 ones beside them

    @property
    def vms(self) -> int:
        return sum(h.vm for h in self.hosts)

    @property
    def gateway(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The underlay bridge's address (the hosts' default route; "outside" for the pods)."""
        return UNDERLAY_GATEWAY6 if self.ipv6 else UNDERLAY_GATEWAY

    @property
    def prefix(self) -> int:
        return UNDERLAY_NET6.prefixlen if self.ipv6 else UNDERLAY_NET.prefixlen

    @property
    def underlay_netns(self) -> str:
        return f"wnl-{self.name}-u"

    def host(self, name: str) -> HostSpec:
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts)
        raise ConfigError(f"no lab host named {name!r} (the lab {self.name!r} has: {known})")


def validate_lab_name(name: str) -> str:
    if not _LAB_NAME.match(name):
        raise ConfigError(f"bad lab name {name!r}: use 1-8 lowercase letters or digits, starting with a letter")
    return name


def make_spec(name: str, count: int, ipv6: bool = False, dual: bool = False, vms: int = 0) -> LabSpec:
    """`vms`: how many of the hosts (the first ones) are VMs with Debian's own kernel."""
    validate_lab_name(name)
    if ipv6 and dual:
        raise ConfigError("--ipv6 (IPv6 only) and --dual-stack exclude each other")
    if not 1 <= count <= MAX_HOSTS:
        raise ConfigError(f"--hosts must be between 1 and {MAX_HOSTS}, not {count}")
    if not 0 <= vms <= min(count, MAX_VMS):
        raise ConfigError(f"--vm must be between 0 and the number of hosts (at most {MAX_VMS}), not {vms}")
    hosts = tuple(
        HostSpec(
            name=f"{HOST_PREFIX}{i}",
            index=i,
            machine=f"wnl-{name}-{HOST_PREFIX}{i}",
            netns=f"wnl-{name}-{HOST_PREFIX}{i}",
            address=(UNDERLAY_NET6 if ipv6 else UNDERLAY_NET).network_address + i,
            address6=UNDERLAY_NET6.network_address + i if dual else None,
            underlay_port=f"vh{i}",
            vm=i <= vms,
        )
        for i in range(1, count + 1)
    )
    return LabSpec(name=name, hosts=hosts, ipv6=ipv6, dual=dual)


def render_etc_hosts(spec: LabSpec, me: HostSpec) -> str:
    lines = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{me.name}", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{h.address}\t{h.name}" for h in spec.hosts]
    lines += [f"{h.address6}\t{h.name}" for h in spec.hosts if h.address6]  # (a dual-stack lab: both records)
    return "\n".join(lines) + "\n"


def render_ssh_config(spec: LabSpec, identity_file: str, known_hosts_file: str) -> str:
    """An ssh_config that reaches every host from the root namespace through the underlay namespace.

    Works for OpenSSH (`ssh -F`), pyinfra (`ssh_config_file`) and testinfra (`--ssh-config`). Host keys are
    generated per host by the lab and pinned in `known_hosts_file`.
    """
    blocks = []
    for host in spec.hosts:
        blocks.append(
            "\n".join(
                [
                    f"Host {host.name}",
                    f"    HostName {host.address}",
                    "    User root",
                    f"    IdentityFile {identity_file}",
                    "    IdentitiesOnly yes",
                    f"    UserKnownHostsFile {known_hosts_file}",
                    "    StrictHostKeyChecking yes",
                    "    ConnectTimeout 10",
                    "    LogLevel ERROR",
                    # socat, not nc: nc stays in CLOSE-WAIT when the host goes away (a reboot), and the SSH
                    # client (pyinfra's paramiko) then waits for it forever; socat ends with the connection
                    f"    ProxyCommand ip netns exec {spec.underlay_netns} socat - {_socat_target(spec)}",
                ]
            )
        )
    return "\n\n".join(blocks) + "\n"


def _socat_target(spec: LabSpec) -> str:
    return "TCP6:[%h]:%p" if spec.ipv6 else "TCP:%h:%p"


def render_known_hosts(spec: LabSpec, public_keys: dict[str, str]) -> str:
    """public_keys: host name -> public host key line ("ssh-ed25519 AAAA... comment").

    Each key is listed under the host's name and its address: OpenSSH looks up the name, paramiko the address.
    """
    lines = []
    for host in spec.hosts:
        keytype, key = public_keys[host.name].split()[:2]
        lines.append(f"{host.name},{host.address} {keytype} {key}")
    return "\n".join(lines) + "\n"
