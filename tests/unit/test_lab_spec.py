from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weave_node.core.errors import ConfigError
from weave_node.lab.spec import (
    MAX_HOSTS,
    UNDERLAY_GATEWAY,
    make_spec,
    render_etc_hosts,
    render_known_hosts,
    render_ssh_config,
)

TEST_NET = ipaddress.IPv4Network("198.18.0.0/15")


@given(st.integers(min_value=1, max_value=MAX_HOSTS))
def test_every_lab_has_unique_names_and_addresses_inside_the_test_range(count: int) -> None:
    spec = make_spec("lab", count)
    assert len(spec.hosts) == count
    assert len({h.name for h in spec.hosts}) == count
    assert len({h.netns for h in spec.hosts} | {spec.underlay_netns}) == count + 1
    addresses = {h.address for h in spec.hosts}
    assert len(addresses) == count
    assert UNDERLAY_GATEWAY not in addresses
    for h in spec.hosts:
        assert h.address in TEST_NET
        assert len(h.underlay_port) <= 15  # IFNAMSIZ
        assert h.netns.startswith("wnl-lab-")


@pytest.mark.parametrize("count", [0, -1, MAX_HOSTS + 1])
def test_bad_host_counts_are_refused(count: int) -> None:
    with pytest.raises(ConfigError, match="--hosts must be between"):
        make_spec("lab", count)


@pytest.mark.parametrize("name", ["", "Lab", "1lab", "lab-1", "toolongname", "a/b"])
def test_bad_lab_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="bad lab name"):
        make_spec(name, 1)


def test_unknown_host_names_the_hosts_that_exist() -> None:
    spec = make_spec("lab", 2)
    with pytest.raises(ConfigError, match=r"no lab host named 'node9' \(the lab 'lab' has: node1, node2\)"):
        spec.host("node9")


def test_ssh_config_reaches_hosts_through_the_underlay_namespace_with_pinned_keys() -> None:
    spec = make_spec("t1", 2)
    text = render_ssh_config(spec, "/k/id", "/k/known_hosts")
    blocks = text.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == ["Host node1", "Host node2"]
    assert "HostName 198.18.0.2" in blocks[1]
    assert "ProxyCommand ip netns exec wnl-t1-u socat - TCP:%h:%p" in text
    assert text.count("StrictHostKeyChecking yes") == 2
    assert text.count("UserKnownHostsFile /k/known_hosts") == 2


def test_known_hosts_lists_each_key_under_name_and_address() -> None:
    spec = make_spec("lab", 2)
    text = render_known_hosts(spec, {"node1": "ssh-ed25519 AAAA1 root@node1", "node2": "ssh-ed25519 AAAA2 x"})
    assert text.splitlines() == ["node1,198.18.0.1 ssh-ed25519 AAAA1", "node2,198.18.0.2 ssh-ed25519 AAAA2"]


def test_etc_hosts_names_every_lab_host() -> None:
    spec = make_spec("lab", 3)
    text = render_etc_hosts(spec, spec.hosts[1])
    assert "127.0.1.1\tnode2" in text
    assert "198.18.0.3\tnode3" in text


def test_an_ipv6_only_lab_has_ipv6_addresses_and_ssh_over_tcp6() -> None:
    spec = make_spec("six", 2, ipv6=True)
    assert [str(h.address) for h in spec.hosts] == ["2001:db8:18::1", "2001:db8:18::2"] and spec.prefix == 64
    assert str(spec.gateway) == "2001:db8:18::fe"
    text = render_ssh_config(spec, "/k", "/kh")
    assert "HostName 2001:db8:18::1\n" in text and "socat - TCP6:[%h]:%p" in text
    assert "socat - TCP:%h:%p" in render_ssh_config(make_spec("four", 1), "/k", "/kh")


def test_a_dual_stack_lab_has_both_and_refuses_ipv6_only_too() -> None:
    spec = make_spec("ds", 2, dual=True)
    assert [(str(h.address), str(h.address6)) for h in spec.hosts] == [
        ("198.18.0.1", "2001:db8:18::1"),
        ("198.18.0.2", "2001:db8:18::2"),
    ]
    assert spec.dual and not spec.ipv6 and "socat - TCP:%h:%p" in render_ssh_config(spec, "/k", "/kh")
    with pytest.raises(ConfigError, match="exclude each other"):
        make_spec("ds", 2, ipv6=True, dual=True)


def test_the_first_hosts_of_a_lab_can_be_vms_and_each_gets_its_own_address_and_mac() -> None:
    from weave_node.lab import vm

    spec = make_spec("v", 3, vms=2)
    assert [h.vm for h in spec.hosts] == [True, True, False] and spec.vms == 2
    assert len({vm.mac(h) for h in spec.hosts}) == 3 and vm.mac(spec.hosts[0]) == "52:54:00:18:00:01"
    network = vm.network_file(spec, spec.hosts[1])
    assert "Address=198.18.0.2/24" in network and "Gateway=198.18.0.254" in network and "Name=eth0" in network
    dual = vm.network_file(make_spec("d", 1, dual=True, vms=1), make_spec("d", 1, dual=True, vms=1).hosts[0])
    assert "Address=2001:db8:18::1/64" in dual and "Gateway=2001:db8:18::fe" in dual
    six = make_spec("s", 1, ipv6=True, vms=1)
    assert "Address=2001:db8:18::1/64" in vm.network_file(six, six.hosts[0])
    for bad in (-1, 4):
        with pytest.raises(ConfigError, match="--vm must be between 0"):
            make_spec("v", 3, vms=bad)
    with pytest.raises(ConfigError, match="at most 8"):
        make_spec("v", 10, vms=9)


def test_the_vm_image_has_its_own_cache_key_and_the_containers_key_is_unchanged() -> None:
    from weave_node.lab import rootfs, vm

    plain = rootfs.cache_key()
    assert plain == rootfs.cache_key(flavour="")  # the nspawn hosts' cache survives the VMs' arrival
    assert rootfs.cache_key(packages=rootfs.PACKAGES + vm.VM_PACKAGES, flavour=vm.vm_flavour()) != plain
    assert "MODULES=list" in vm.SETUP_HOOK and "force_load" in vm.SETUP_HOOK  # the small initramfs
