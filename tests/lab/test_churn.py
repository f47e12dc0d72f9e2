"""IPAM through host churn on the lab (issue 18), with the stock rollout and removal over SSH: a host replaced
four times in a row and every host replaced once (router killed, the removal with weave_remove_state=true, a new
machine id, the rollout again) never stop allocation anywhere; a host re-installed without the removal loses
its old identity's space within seconds; a host that is simply gone has its space reclaimed after the grace
period; fencing and unfencing are logged."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import verify
from tests.helpers import poll, run_cli
from tests.lab.test_lab import grand_total
from tests.lab.test_rollout import Lab, running_lab

pytestmark = pytest.mark.lab
NODES = ("node1", "node2", "node3")
CLI = "/opt/weave-node/venv/bin/weave-node"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab("c", 3) as (name, ssh_config):
        lab = Lab(name, ssh_config)
        out = lab.deploy()
        assert grand_total(out.stdout + out.stderr)[1] == 0
        for node in NODES:
            poll(lambda n=node: lab.status(n).get("ipam", {}).get("ready"), timeout=60, what=f"{node} ready")  # type: ignore[misc]
        yield lab


def ipam(lab: Lab, node: str) -> dict[str, Any]:
    return dict(lab.status(node).get("ipam") or {})


def owners(lab: Lab, node: str) -> dict[str, str]:
    """peer name -> nickname of the ring's owners, as `node` sees them."""
    return {o["peer"]: o["nickname"] for o in ipam(lab, node).get("owners", [])}


def name_of(lab: Lab, node: str) -> str:
    return str(lab.status(node)["router"]["name"])


class Watch:
    """While the hosts churn: every host that is not being replaced must stay ready, and a pod ADD (and DEL)
    through the installed plugin on node1 must succeed, every second or so."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.busy: set[str] = set()  # hosts being replaced right now
        self.problems: list[str] = []
        self.adds = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)

    def _run(self) -> None:
        env = "CNI_CONTAINERID=watch CNI_NETNS=/run/netns/watch CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin"
        pod = (
            f"ip netns add watch; {verify.CONF} > /tmp/watch.json; "
            f"CNI_COMMAND=ADD {env} /opt/cni/bin/weave-net < /tmp/watch.json && "
            f"CNI_COMMAND=DEL {env} /opt/cni/bin/weave-net < /tmp/watch.json; rc=$?; ip netns delete watch; exit $rc"
        )
        while not self.stop.wait(0.5):
            for node in NODES:
                if node in self.busy:
                    continue
                doc = ipam(self.lab, node)
                if doc and not doc.get("ready"):
                    self.problems.append(f"{time.strftime('%T')} {node} not ready: {doc.get('waiting')}")
            if "node1" not in self.busy:
                out = self.lab.ssh("node1", pod, check=False)
                if out.returncode != 0:
                    self.problems.append(f"{time.strftime('%T')} ADD on node1 failed: {out.stdout}{out.stderr}")
                else:
                    self.adds += 1


def replace(lab: Lab, node: str, watch: Watch, *, removal: bool = True) -> tuple[str, str]:
    """Kill the router, then the removal (or, re-imaged, just the state gone), a new machine id, the rollout
    again. Returns (old peer name, new peer name)."""
    old = name_of(lab, node)
    watch.busy.add(node)
    try:
        lab.ssh(node, "systemctl kill -s KILL weave-node; systemctl stop weave-node", check=False)
        if removal:
            out = run_cli(
                "pyinfra", "-y", "inventory/lab.py", "deploys/remove.py", "--limit", node,
                "--data", "weave_remove_state=true", env=lab.env, check=True,
            )  # fmt: skip
            assert "handed" in out.stdout + out.stderr, out.stdout[-3000:]
        else:
            lab.ssh(node, "rm -rf /var/lib/weave-node")
        lab.ssh(node, "rm -f /etc/machine-id && systemd-machine-id-setup")
        out = lab.deploy("--limit", node)
        assert grand_total(out.stdout + out.stderr)[1] == 0
        new = name_of(lab, node)
    finally:
        watch.busy.discard(node)
    assert new != old
    return old, new


def test_a_host_replaced_four_times_and_every_host_once_never_stops_allocation(lab: Lab) -> None:
    with Watch(lab) as watch:
        gone = []
        for _ in range(4):
            old, _new = replace(lab, "node3", watch)
            gone.append(old)
            live = {name_of(lab, n) for n in NODES}
            now = owners(lab, "node1")
            assert now and old not in now, "the hand-over took the old identity out of the ring at once"
            poll(lambda live=live: set(owners(lab, "node1")) == live, timeout=20, what="only live owners")  # type: ignore[misc]
        for node in NODES:
            old, _ = replace(lab, node, watch)
            gone.append(old)
        for node in NODES:
            poll(lambda n=node: ipam(lab, n).get("ready"), timeout=30, what=f"{node} ready")  # type: ignore[misc]
            seen = owners(lab, node)
            assert len(seen) == 3 and not set(seen) & set(gone), seen
    assert not watch.problems, "\n".join(watch.problems)
    assert watch.adds >= 20, f"only {watch.adds} ADDs ran"
    for node in NODES:  # (a router started for its hand-over may wait for a ring sync: that is not this)
        assert "IPAM fenced: only" not in lab.ssh(node, "journalctl -u weave-node -b --no-pager").stdout


def test_a_host_re_installed_without_the_removal_loses_its_old_identity_at_once(lab: Lab) -> None:
    with Watch(lab) as watch:
        _old, new = replace(lab, "node2", watch, removal=False)
        live = {name_of(lab, n) for n in NODES}
        poll(lambda: set(owners(lab, "node1")) == live, timeout=30, what="the old identity reclaimed")
    log = "".join(lab.ssh(n, "journalctl -u weave-node -b --no-pager").stdout for n in NODES)
    assert f"replaced by peer {new} (node2)" in log, log[-3000:]
    assert not watch.problems, "\n".join(watch.problems)


def test_a_gone_host_is_reclaimed_after_the_grace_period_and_fencing_is_logged(lab: Lab) -> None:
    out = lab.deploy("--serial", "--data", "weave_ipam_reclaim_after=20")
    assert grand_total(out.stdout + out.stderr)[1] == 0
    verify.add_pod(lab.host("node3"), "before")  # node3 an owner for sure
    gone = name_of(lab, "node3")
    poll(lambda: gone in owners(lab, "node1"), timeout=20, what="node3 an owner")
    lab.ssh("node3", "systemctl stop weave-node")
    started = time.monotonic()
    poll(lambda: len(owners(lab, "node1")) == 2 and gone not in owners(lab, "node1"), timeout=60, what="reclaimed")
    took = time.monotonic() - started
    assert 15 <= took <= 45, f"reclaimed after {took:.0f} s with a grace period of 20 s"
    log = lab.ssh("node1", "journalctl -u weave-node -b --no-pager").stdout
    assert (
        "as a majority of owners vouches" in log
        or "as a majority of owners vouches" in lab.ssh("node2", "journalctl -u weave-node -b --no-pager").stdout
    )
    # node3 back: its pod's address is still free, so it keeps it; then node2 and node3 go: node1 fences, logs it.
    lab.ssh("node3", "systemctl start weave-node")
    poll(lambda: ipam(lab, "node3").get("ready"), timeout=60, what="node3 ready again")
    poll(lambda: "took back" in lab.ssh("node3", "journalctl -u weave-node -b --no-pager").stdout, timeout=30,
         what="node3 takes its pod's address back")  # fmt: skip
    verify.del_pod(lab.host("node3"), "before")
    for node in ("node2", "node3"):
        lab.ssh(node, "systemctl stop weave-node")
    poll(lambda: "IPAM fenced" in lab.ssh("node1", "journalctl -u weave-node -b --no-pager").stdout, timeout=40,
         what="node1 to log that it fenced")  # fmt: skip
    for node in ("node2", "node3"):
        lab.ssh(node, "systemctl start weave-node")
    poll(lambda: "IPAM unfenced" in lab.ssh("node1", "journalctl -u weave-node -b --no-pager").stdout, timeout=60,
         what="node1 to log that it unfenced")  # fmt: skip
    for node in NODES:
        poll(lambda n=node: ipam(lab, n).get("ready"), timeout=60, what=f"{node} ready")  # type: ignore[misc]
