"""The libcni driver against Debian's reference plugins (bridge + host-local), all inside namespaces we own."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

from tests.cni.libcni import REFERENCE_PLUGINS, Driver, ensure_driver

SUBNET = ipaddress.ip_network("10.123.0.0/24")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True, timeout=30)


def test_add_check_del_with_reference_bridge(tmp_path: Path) -> None:
    binary = ensure_driver()
    pid = os.getpid()
    host_ns, pod_ns = f"wnt-drvhost-{pid}", f"wnt-drv-{pid}"
    bridge = f"cnidrv{pid % 1000}"
    conflist = tmp_path / "10-drv.conflist"
    conflist.write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "cnidrv-test",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": bridge,
                        "isGateway": True,
                        "ipam": {
                            "type": "host-local",
                            "subnet": str(SUBNET),
                            "dataDir": str(tmp_path / "ipam"),
                        },
                    }
                ],
            }
        )
    )
    driver = Driver(binary, str(REFERENCE_PLUGINS), tmp_path / "cache", netns=host_ns)
    pod_path = f"/var/run/netns/{pod_ns}"
    container_id = f"drv-{pid}"
    _ip("netns", "add", host_ns)
    try:
        _ip("netns", "add", pod_ns)
        result = driver.add(conflist, container_id, pod_path)
        assert result["cniVersion"] == "1.0.0"
        addresses = [ipaddress.ip_interface(ip["address"]) for ip in result["ips"]]
        assert addresses
        assert all(a.ip in SUBNET for a in addresses), result
        assert (tmp_path / "cache" / "results" / f"cnidrv-test-{container_id}-eth0").exists()

        # The bridge is in the host namespace we made, the pod's eth0 carries the address.
        host_links = json.loads(_ip("-j", "-n", host_ns, "link", "show", "dev", bridge).stdout)
        assert host_links[0]["ifname"] == bridge
        pod_addrs = json.loads(_ip("-j", "-n", pod_ns, "addr", "show", "dev", "eth0").stdout)
        assert str(addresses[0].ip) in {a["local"] for a in pod_addrs[0]["addr_info"]}

        lease = tmp_path / "ipam" / "cnidrv-test" / str(addresses[0].ip)
        assert lease.read_text().startswith(container_id)

        driver.check(conflist, container_id, pod_path)
        driver.delete(conflist, container_id, pod_path)
        assert not (tmp_path / "cache" / "results" / f"cnidrv-test-{container_id}-eth0").exists()
        assert not lease.exists()
        assert json.loads(_ip("-j", "-n", pod_ns, "link", "show").stdout)[0]["ifname"] == "lo"
        assert len(json.loads(_ip("-j", "-n", pod_ns, "link", "show").stdout)) == 1
        driver.delete(conflist, container_id, pod_path)  # idempotent: no cached result, nothing left
    finally:
        subprocess.run(["ip", "netns", "del", pod_ns], capture_output=True, check=False, timeout=30)
        subprocess.run(["ip", "netns", "del", host_ns], capture_output=True, check=False, timeout=30)
    assert pod_ns not in _ip("netns", "list").stdout
    assert host_ns not in _ip("netns", "list").stdout
