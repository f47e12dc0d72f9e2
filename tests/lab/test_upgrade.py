"""Upgrade from the previous release (issue 21, item 1) on the lab: v0.1.0, built as a wheelhouse from its git tag
and rolled out with its own deploy, is upgraded to this tree host by host (first one host: a mixed cluster in
which the new router speaks mesh protocol version 1 to the old ones; then the rest with --serial), while pods on
every host ping pods on the others through the fast datapath: no reply lost (the kernel datapath keeps forwarding
while each router restarts), every pod keeps its address, IPAM agrees everywhere. Then a downgrade: refused by
this rollout, and supported by the previous release's own rollout (the state format is the same)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import verify
from tests.helpers import BIN, REPO, poll, run_cli
from tests.lab.test_day2 import POD, Pings
from tests.lab.test_lab import grand_total
from tests.lab.test_rollout import Lab, running_lab

pytestmark = pytest.mark.lab
PREVIOUS = ("v0.1.0", "278870e")  # the tag, or its commit where a clone has no tags
NODES = ("node1", "node2", "node3")
CLI = "/opt/weave-node/venv/bin/weave-node"


class UpgradeLab(Lab):
    pods: dict[str, str]

    def version(self, node: str) -> str:
        return self.ssh(node, f"{CLI} --version").stdout.strip()

    def connections(self, node: str) -> dict[str, str]:
        return {
            c["nickname"]: c["info"] for c in self.status(node).get("connections", []) if c["state"] == "established"
        }

    def allocations(self, node: str) -> dict[str, str]:
        rows = json.loads(self.ssh(node, f"{CLI} ipam allocations --json").stdout)
        return {r["container_id"]: r["ip"] for r in rows}

    def owners(self, node: str) -> list[tuple[str, int]]:
        doc = self.status(node).get("ipam", {})
        return sorted((o["peer"], o["size"]) for o in doc.get("owners", []))

    def reaches(self, src: str, dst: str) -> bool:
        return self.ssh(src, f"ip netns exec {POD} ping -c 1 -W 1 {self.pods[dst]}", check=False).returncode == 0


def _previous_tree(dest: Path) -> Path:
    for ref in PREVIOUS:
        out = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=False)
        if out.returncode == 0:
            subprocess.run(["tar", "-x", "-C", str(dest)], input=out.stdout, check=True)  # our own repository's
            return dest
    raise AssertionError(f"neither {' nor '.join(PREVIOUS)} is in this clone: {out.stderr.decode()[-300:]}")


def previous_deploy(lab: Lab, tree: Path, *args: str, inventory: str = "inventory/lab.py") -> tuple[int, int]:
    """The previous release's own rollout (its deploy, templates and wheel), as a user of it would run it."""
    env = dict(os.environ, WEAVE_LAB=lab.name, PYTHONPATH=str(tree))
    out = subprocess.run(
        [str(BIN / "pyinfra"), "-y", inventory, "deploys/weave_node.py", *args],
        capture_output=True, text=True, env=env, cwd=tree, timeout=900, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    changed, errors, _ = grand_total(out.stdout + out.stderr)
    return changed, errors


def previous_wheelhouse(tree: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([str(BIN / "python"), "-m", "deploys.wheelhouse"], capture_output=True, text=True, env=env,
                         cwd=tree, timeout=900, check=True)  # fmt: skip
    return out.stdout.strip()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UpgradeLab, Path]]:
    tree = _previous_tree(tmp_path_factory.mktemp("previous"))
    with running_lab("u", len(NODES)) as (name, ssh_config):
        lab = UpgradeLab(name, ssh_config)
        changed, errors = previous_deploy(lab, tree)
        assert errors == 0 and changed > 0
        lab.pods = {}
        for node in NODES:
            poll(lambda n=node: len(lab.connections(n)) == 2, timeout=60, what=f"{node} meshed")  # type: ignore[misc]
            lab.pods[node] = verify.add_pod(lab.host(node), POD)
        yield lab, tree


def _new_deploy(lab: Lab, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli("pyinfra", "-y", "inventory/lab.py", "deploys/weave_node.py", *args, env=lab.env, check=check)


def test_the_previous_release_is_upgraded_host_by_host_without_losing_a_reply_or_an_address(
    lab: tuple[UpgradeLab, Path],
) -> None:
    from weave_node import __version__

    upgrade, _tree = lab
    old = {node: upgrade.version(node) for node in NODES}
    assert set(old.values()) == {"weave-node 0.1.0"}
    before = {node: upgrade.allocations(node) for node in NODES}
    with Pings(upgrade, "node1", ("node2", "node3")) as pings, Pings(upgrade, "node2", ("node3",)) as more:
        start = time.monotonic()
        out = _new_deploy(upgrade, "--limit", "node1")
        first = time.monotonic() - start
        assert grand_total(out.stdout + out.stderr)[1] == 0
        assert upgrade.version("node1") == f"weave-node {__version__}"
        # A mixed cluster: the new router speaks version 1 to the old ones, and pods and IPAM work across.
        assert upgrade.connections("node1") == {"node2": "unencrypted, v1", "node3": "unencrypted, v1"}
        for a, b in (("node1", "node2"), ("node3", "node1")):
            poll(lambda a=a, b=b: upgrade.reaches(a, b), timeout=10, what=f"{a} -> {b} in the mixed cluster")  # type: ignore[misc]
        mixed = verify.add_pod(upgrade.host("node1"), "mixed")
        verify.del_pod(upgrade.host("node1"), "mixed")
        start = time.monotonic()
        out = _new_deploy(upgrade, "--limit", "node2", "--limit", "node3", "--serial")
        rest = time.monotonic() - start
        assert grand_total(out.stdout + out.stderr)[1] == 0
        lost = {**pings.lost(), **{f"node2->{k}": v for k, v in more.lost().items()}}
    print(f"\nupgrade: node1 {first:.1f} s, node2+node3 (--serial) {rest:.1f} s; lost {lost}; mixed pod {mixed}")  # noqa: T201
    assert lost == {"node2": 0, "node3": 0, "node2->node3": 0}
    for node in NODES:
        assert upgrade.version(node) == f"weave-node {__version__}"
        assert upgrade.allocations(node) == before[node], f"{node}'s pods kept their addresses"
        want = {o: "unencrypted, v2" for o in NODES if o != node}
        poll(lambda n=node, w=want: upgrade.connections(n) == w, timeout=30, what=f"{node} on v2 with all")  # type: ignore[misc]
        actual = upgrade.ssh(node, f"ip -n {POD} -4 -o addr show eth0").stdout.split()[3].split("/")[0]
        assert actual == upgrade.pods[node] == before[node][POD]
    for a, b in (("node1", "node2"), ("node2", "node3"), ("node3", "node1")):
        assert upgrade.reaches(a, b), f"{a} -> {b} after the upgrade"
    assert upgrade.owners("node1") == upgrade.owners("node2") == upgrade.owners("node3")
    again = _new_deploy(upgrade)
    assert grand_total(again.stdout + again.stderr)[:2] == (0, 0)


def test_a_downgrade_is_refused_by_this_rollout_and_works_with_the_previous_ones(
    lab: tuple[UpgradeLab, Path],
) -> None:
    upgrade, tree = lab
    wheels = previous_wheelhouse(tree)
    refused = _new_deploy(upgrade, "--data", f"weave_wheelhouse={wheels}", check=False)
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0 and re.search(
        r"node\d runs weave-node 0\.2\.0 and this rollout would install 0\.1\.0", text
    )
    assert "Starting operation" not in text
    before = {node: upgrade.allocations(node) for node in NODES}
    changed, errors = previous_deploy(upgrade, tree)
    assert errors == 0 and changed > 0
    for node in NODES:
        assert upgrade.version(node) == "weave-node 0.1.0"
        assert upgrade.allocations(node) == before[node]
        poll(lambda n=node: len(upgrade.connections(n)) == 2, timeout=60, what=f"{node} meshed again")  # type: ignore[misc]
    for a, b in (("node1", "node2"), ("node2", "node3"), ("node3", "node1")):
        poll(lambda a=a, b=b: upgrade.reaches(a, b), timeout=30, what=f"{a} -> {b} after the downgrade")  # type: ignore[misc]
