"""Lab hosts with Debian's own kernel (`lab up --vm`): QEMU VMs (emulated, slow) beside an nspawn host on this
machine's kernel, one underlay, the same inventory and rollout. What the VMs are for: the kernel features this
machine lacks (IPsec ESP, rfc4106(gcm(aes)), WireGuard) that our users' stock kernels have."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e import verify
from tests.helpers import poll
from tests.lab.test_lab import grand_total
from tests.lab.test_rollout import Lab, running_lab

HOSTS, VMS = 3, 2  # node1, node2: VMs; node3: an nspawn host
NAMES = tuple(f"node{i}" for i in range(1, HOSTS + 1))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab("vm", HOSTS, "--vm", str(VMS)) as (name, ssh_config):
        yield Lab(name, ssh_config)


def test_vms_run_a_stock_kernel_with_what_this_machine_lacks(lab: Lab) -> None:
    for name in NAMES[:VMS]:
        out = lab.ssh(
            name,
            "uname -r; modprobe -a esp4 xfrm_user wireguard && echo loaded; "
            "grep -c '^name *: rfc4106(gcm(aes))' /proc/crypto; hostname; ip -br addr show eth0",
        )
        lines = out.stdout.split()
        assert lines[0].endswith("-amd64") and lines[0] != os.uname().release, out.stdout  # Debian's, not ours
        assert "loaded" in lines and name in lines, out.stdout
        assert f"198.18.0.{NAMES.index(name) + 1}/24" in out.stdout, out.stdout
        assert int(lines[lines.index("loaded") + 1]) >= 1, out.stdout  # the AEAD ESP needs, in the kernel
    container = lab.ssh(NAMES[-1], "uname -r").stdout.strip()
    assert container == os.uname().release  # the nspawn host shares this machine's kernel


def test_the_rollout_networks_pods_across_vms_and_a_container(lab: Lab) -> None:
    out = lab.deploy()
    assert grand_total(out.stdout + out.stderr)[1] == 0, out.stdout
    for name in NAMES:
        poll(lambda n=name: kernel_paths(lab, n), timeout=60, what=f"{name}'s kernel datapath to every peer")
    hosts = {name: lab.host(name) for name in NAMES}
    verify.suite(hosts, outside="198.18.0.254")  # the underlay's gateway, through the masquerade


def kernel_paths(lab: Lab, name: str) -> bool:
    """Every peer of `name` is reached by the kernel (VXLAN or direct), none by the sleeve."""
    peers = lab.status(name).get("datapath", {}).get("peers", [])
    return len(peers) == HOSTS - 1 and all(p["mode"] in ("fastdp", "direct") for p in peers)
