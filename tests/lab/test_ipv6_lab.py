"""An IPv6-only lab: three systemd hosts with nothing but 2001:db8:18::N/64 on their link (`lab up --ipv6`),
reached over SSH/IPv6, rolled out with an IPv6 range alone: the mesh, VXLAN and the sleeve over IPv6, the
verify suite on IPv6 (pods, AAAA names, ff02::1 multicast, masquerade to the underlay's gateway)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e import verify
from tests.helpers import poll
from tests.lab.test_lab import grand_total
from tests.lab.test_rollout import Lab, running_lab

HOSTS = 3
NAMES = tuple(f"node{i}" for i in range(1, HOSTS + 1))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab("six", HOSTS, "--ipv6") as (name, ssh_config):
        yield Lab(name, ssh_config)


def test_an_ipv6_range_rolls_out_on_an_ipv6_only_lab(lab: Lab) -> None:
    node1 = lab.ssh("node1", "ip -4 -o addr show scope global; ip -6 -o addr show dev eth0 scope global").stdout
    assert "inet " not in node1 and "2001:db8:18::1/64" in node1, node1  # no IPv4 anywhere on the hosts
    out = lab.deploy("--data", "weave_ipalloc_range=fd32:57::/64")
    assert grand_total(out.stdout + out.stderr)[1] == 0, out.stdout
    for i, name in enumerate(NAMES, 1):
        poll(lambda n=name: all(p["mode"] == "fastdp" for p in lab.status(n).get("datapath", {}).get("peers", [0])),
             timeout=30, what=f"{name}'s kernel datapath to every peer")  # fmt: skip
        doc = lab.status(name)
        assert doc["datapath"]["bridge_address"].startswith("fd32:57:") and doc["datapath"]["mtu"] == 1430, doc
        vteps = {p["vtep"] for p in doc["datapath"]["peers"]}
        assert vteps == {f"2001:db8:18::{j}" for j in range(1, HOSTS + 1) if j != i}, vteps
        vxlan = lab.ssh(name, "ip -d link show vxlan-6784").stdout
        assert f"local 2001:db8:18::{i} " in vxlan, vxlan
    hosts = {name: lab.host(name) for name in NAMES}
    verify.suite(hosts, outside="2001:db8:18::fe")  # the underlay's gateway, reached through the masquerade
    again = lab.deploy("--data", "weave_ipalloc_range=fd32:57::/64")  # re-run: nothing changes
    assert grand_total(again.stdout + again.stderr)[:2] == (0, 0), again.stdout


def test_a_rolling_change_to_dual_stack_on_an_ipv6_only_lab(lab: Lab) -> None:
    """From the IPv6 range alone to dual-stack by one rollout, host by host: each restarted router holds its new
    IPv4 ring back while a neighbour still has the IPv6 range alone (the health gate does not wait on it), and
    the ring is agreed once every router has the range; then IPv4 and IPv6 pods over the IPv6-only underlay."""
    out = lab.deploy("--serial", "--data", "weave_ipalloc_range=10.32.0.0/12,fd32:57::/64")  # host by host
    assert grand_total(out.stdout + out.stderr)[1] == 0, out.stdout
    for name in NAMES:
        poll(lambda n=name: lab.status(n).get("ipam", {}).get("ready"), timeout=30, what=f"{name}'s IPv4 ring")
        ipam = lab.status(name)["ipam"]
        assert ipam["range"] == "10.32.0.0/12" and ipam["ipv6"]["ready"] and not ipam.get("held"), ipam
    held = [n for n in NAMES if "IPv4 IPAM: connected peer(s)" in lab.ssh(n, "journalctl -u weave-node").stdout]
    assert held, "no router held its IPv4 ring back during the roll"  # (the first ones restarted did)
    hosts = {name: lab.host(name) for name in NAMES}
    verify.suite(hosts, outside="2001:db8:18::fe")
