"""Day-2 operations on the lab (issue 21), with the stock rollout over SSH and pods pinging each other throughout:
hosts added by adding them to the inventory (the running routers learn them live: no router restarts, no reply
lost), a host retired with `weave-node rollout --retire` (its space with the others at once, no one dials it any
more, no reply lost), and the password rotated in two rollouts (a window in which both are accepted) — no router
restart, and no reply lost while the sleeve is re-keyed (make-before-break).

The lab has 8 hosts; the inventory starts with 3 of them (WEAVE_LAB_ONLY), grows to 8 (five added at once) and
shrinks to 4 (four retired at once)."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import verify
from tests.helpers import poll, run_cli
from tests.lab.test_lab import grand_total
from tests.lab.test_rollout import Lab, running_lab

pytestmark = pytest.mark.lab
FIRST = ("node1", "node2", "node3")
NEW = ("node4", "node5", "node6", "node7", "node8")  # added at once
ALL = (*FIRST, *NEW)
RETIRED = NEW[1:]  # retired at once
CLI = "/opt/weave-node/venv/bin/weave-node"
POD = "d2"


def address(node: str) -> str:
    return f"198.18.0.{node.removeprefix('node')}"


class Day2Lab(Lab):
    def __init__(self, name: str, ssh_config: str, secrets: Path) -> None:
        super().__init__(name, ssh_config)
        self.secrets = secrets
        self.password: Path | None = self.secret("password-1", "first-password-5b2e")
        self.hosts = FIRST
        self.pods: dict[str, str] = {}

    def secret(self, name: str, text: str) -> Path:
        path = self.secrets / name
        path.write_text(text + "\n")
        path.chmod(0o600)
        return path

    def roll(self, *data: str, check: bool = True, limit: str = "") -> tuple[int, int]:
        """The rollout onto self.hosts (or `limit`) with this password (and `data`): (changed, errors)."""
        env = {**self.env, "WEAVE_LAB_ONLY": ",".join(self.hosts)}
        args = ["--data", f"weave_password_file={self.password}"] if self.password else []
        args += ["--limit", limit] if limit else []
        for item in data:
            args += ["--data", item]
        out = run_cli(
            "pyinfra", "-y", "inventory/lab.py", "deploys/weave_node.py", *args, env=env, check=check
        )  # fmt: skip
        changed, errors, _ = grand_total(out.stdout + out.stderr)
        return changed, errors

    def pid(self, node: str) -> int:
        return int(self.ssh(node, "systemctl show -p MainPID --value weave-node").stdout.strip())

    def infos(self, node: str) -> dict[str, str]:
        doc = self.status(node)
        return {c["nickname"]: c["info"] for c in doc.get("connections", []) if c["state"] == "established"}

    def established(self, node: str) -> set[str]:
        doc = self.status(node)
        return {c["nickname"] for c in doc.get("connections", []) if c["state"] == "established"}

    def add_pod(self, node: str) -> None:
        self.pods[node] = verify.add_pod(self.host(node), POD)

    def reaches(self, src: str, dst: str) -> bool:
        out = self.ssh(src, f"ip netns exec {POD} ping -c 1 -W 1 {self.pods[dst]}", check=False)
        return out.returncode == 0


def _network_report(lab: Day2Lab, a: str, b: str) -> None:
    """What a failed reach looked like (printed for the test's report): both routers' peers and sleeve links, the
    pods' neighbour caches and routes, the bridges' learned MACs and neighbours, the routers' last log lines."""
    for node in (a, b):
        doc = lab.status(node).get("datapath", {})
        peers = [(p["nickname"], p["mode"], p["reason"]) for p in doc.get("peers", [])]
        print(f"== {node}: peers {peers}\n   sleeve {doc.get('sleeve')}")  # noqa: T201 - the test's report
        cmd = (f"date +%T.%N; ip netns exec {POD} ip neigh; ip netns exec {POD} ip route; ip neigh show dev weave; "
               "ip route | grep -v 'proto 87' ; echo direct routes: $(ip route | grep -c 'proto 87'); "
               "bridge fdb show br weave | grep -v permanent; bridge fdb show dev vxlan-6784; "
               "iptables -S FORWARD -v 2>/dev/null | head; ebtables-save 2>/dev/null | grep -v '^#'; "
               "journalctl -u weave-node --no-pager -n 60")  # fmt: skip
        print(lab.ssh(node, cmd, check=False).stdout)  # noqa: T201


class Pings:
    """`ping -i 0.1` from the pod on one host to the pods on others, in the background on the lab host, for as long
    as a step runs; then how many replies were lost."""

    def __init__(self, lab: Day2Lab, src: str, dsts: tuple[str, ...]) -> None:
        self.lab, self.src, self.dsts = lab, src, dsts
        self.pids: dict[str, int] = {}

    def __enter__(self) -> Pings:
        for dst in self.dsts:
            log = f"/tmp/ping-{dst}.log"
            ping = f"ip netns exec {POD} ping -D -i 0.1 {self.lab.pods[dst]}"  # (-D: each reply's time)
            cmd = f"setsid nohup {ping} > {log} 2>&1 < /dev/null & echo $!"
            self.pids[dst] = int(self.lab.ssh(self.src, cmd).stdout.strip())
        return self

    def __exit__(self, *exc: object) -> None:
        for pid in self.pids.values():
            self.lab.ssh(self.src, f"kill -INT {pid}", check=False)

    def lost(self) -> dict[str, int]:
        """Stops the pings; {dst: replies lost}."""
        self.__exit__()
        lost = {}
        for dst in self.dsts:

            def summary(d: str = dst) -> re.Match[str] | None:
                text = self.lab.ssh(self.src, f"cat /tmp/ping-{d}.log").stdout
                return re.search(r"(\d+) packets transmitted, (\d+) received", text)

            found = poll(summary, timeout=10, what=f"ping to {dst} stopped")
            sent, received = int(found.group(1)), int(found.group(2))
            assert sent > 20, f"only {sent} pings to {dst}"
            lost[dst] = sent - received
        return lost

    def gaps(self) -> dict[str, list[str]]:
        """{dst: the runs of lost replies, as "HH:MM:SS.s-HH:MM:SS.s (N)" in UTC}: to match the routers' journals."""
        out = {}
        for dst in self.dsts:
            text = self.lab.ssh(self.src, f"cat /tmp/ping-{dst}.log").stdout
            got = {int(m[1]): float(m[0]) for m in re.findall(r"\[(\d+\.\d+)\].*icmp_seq=(\d+) ", text)}
            runs, seqs = [], sorted(got)
            for before, after in itertools.pairwise(seqs):
                if after - before > 1:
                    runs.append(f"{_utc(got[before])}-{_utc(got[after])} ({after - before - 1})")
            out[dst] = runs
        return out


def _utc(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 10) % 10}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Day2Lab]:
    with running_lab("d", len(ALL)) as (name, ssh_config):
        lab = Day2Lab(name, ssh_config, tmp_path_factory.mktemp("secrets"))
        changed, errors = lab.roll()
        assert errors == 0 and changed > 0
        for node in FIRST:
            poll(lambda n=node: len(lab.established(n)) == 2, timeout=60, what=f"{node} meshed")  # type: ignore[misc]
            lab.add_pod(node)
        yield lab


def test_hosts_added_to_the_inventory_join_without_restarting_any_router(lab: Day2Lab) -> None:
    before = {node: lab.pid(node) for node in FIRST}
    with Pings(lab, "node1", ("node2", "node3")) as pings:
        lab.hosts = ALL
        start = time.monotonic()
        changed, errors = lab.roll()
        rolled = time.monotonic() - start
        assert errors == 0 and changed > 0
        for node in NEW:
            lab.add_pod(node)
        joined = time.monotonic()
        for new in NEW:
            for other in ALL:
                if other != new:
                    poll(lambda a=new, b=other: lab.reaches(a, b), timeout=30, what=f"{new} -> {other}")  # type: ignore[misc]
                    assert lab.reaches(other, new), f"{other} -> {new}"
        reached = time.monotonic() - joined
        lost = pings.lost()
    text = f"adding {len(NEW)} hosts: rollout {rolled:.1f} s, their pods reach every pod {reached:.1f} s later"
    print(f"\n{text}, lost {lost}")  # noqa: T201
    assert {node: lab.pid(node) for node in FIRST} == before, "a router restarted"
    assert lost == {"node2": 0, "node3": 0}
    for node in ALL:
        want = {other for other in ALL if other != node}
        poll(lambda n=node, w=want: lab.established(n) == w, timeout=30, what=f"{node} meshed with all")  # type: ignore[misc]
        peers = lab.ssh(node, "grep ^WEAVE_PEERS= /etc/weave-node/mesh.env").stdout.strip().split("=", 1)[1]
        assert sorted(peers.split()) == sorted(address(o) for o in want)
    assert "WEAVE_PEERS" not in lab.ssh("node1", "cat /etc/weave-node/weave-node.env").stdout
    journal = lab.ssh("node1", "journalctl -u weave-node --no-pager -o cat").stdout
    added = " ".join(f"{address(n)}:6783" for n in NEW)
    assert f"peer list changed: added {added}; no longer configured none" in journal, journal[-2000:]
    assert lab.roll() == (0, 0)  # converged: a second run changes nothing


def test_a_retired_host_hands_its_space_over_and_leaves_every_peer_list(lab: Day2Lab) -> None:
    env = {**lab.env, "WEAVE_LAB_ONLY": ",".join(ALL)}
    bad = run_cli("weave-node", "rollout", "--retire", "node9", "--data", f"weave_password_file={lab.password}",
                  env=env, check=False)  # fmt: skip
    assert bad.returncode == 2 and "--retire node9: not in inventory/lab.py" in bad.stderr, bad.stderr
    retired = {lab.status(node)["router"]["name"] for node in RETIRED}
    stayed = tuple(n for n in ALL if n not in RETIRED)
    before = {node: lab.pid(node) for node in stayed}
    for node in RETIRED:
        verify.del_pod(lab.host(node), POD)
        del lab.pods[node]
    with Pings(lab, "node1", ("node2", "node4")) as pings:
        out = run_cli("weave-node", "rollout", "--retire", ",".join(RETIRED), "--data",
                      f"weave_password_file={lab.password}", env=env, check=True)  # fmt: skip
        lost = pings.lost()
    lab.hosts = stayed  # (the next tests go on with these, whatever is asserted below)
    text = out.stdout + out.stderr
    assert "handed" in text and f"retired {', '.join(RETIRED)}" in text, text[-3000:]
    # At once: the hand-overs are done when the removal step ends (no grace period)
    owners = {o["peer"] for o in lab.status("node1")["ipam"]["owners"]}
    assert not retired & owners and len(owners) == len(stayed), owners
    for node in RETIRED:
        verify.nothing_of_ours_is_left(lab.host(node))
    assert {node: lab.pid(node) for node in stayed} == before, "a router restarted"
    assert lost == {"node2": 0, "node4": 0}
    gone = {f"{address(n)}:6783" for n in RETIRED}
    for node in stayed:
        assert not any(address(n) in lab.ssh(node, "cat /etc/weave-node/mesh.env").stdout for n in RETIRED)
        targets = lambda n=node: {t["address"] for t in lab.status(n).get("targets", [])}  # noqa: E731
        poll(lambda t=targets: not t() & gone, timeout=30, what=f"{node} no longer dials the retired hosts")  # type: ignore[misc]
        assert lab.established(node) == {o for o in stayed if o != node}
    assert lab.roll() == (0, 0)


def test_the_password_is_rotated_in_two_rollouts_without_a_restart_or_a_partition(lab: Day2Lab) -> None:
    first = lab.password
    second = lab.secret("password-2", "second-password-c41a")
    empty = lab.secret("empty", "")
    lab.password = empty
    out = run_cli("pyinfra", "-y", "inventory/lab.py", "deploys/weave_node.py", "--data",
                  f"weave_password_file={empty}", env={**lab.env, "WEAVE_LAB_ONLY": ",".join(lab.hosts)},
                  check=False)  # fmt: skip
    assert out.returncode != 0 and f"weave_password_file {empty} is empty" in out.stdout + out.stderr
    assert "Starting operation" not in out.stdout + out.stderr
    before = {node: lab.pid(node) for node in lab.hosts}
    with Pings(lab, "node1", ("node2", "node3", "node4")) as pings:
        lab.password = second
        changed, errors = lab.roll(f"weave_previous_password_file={first}")  # step 1: the new one, the old too
        assert errors == 0 and changed > 0
        for node in lab.hosts:
            assert lab.host(node).file("/etc/weave-node/password.previous").mode == 0o600
        changed, errors = lab.roll()  # step 2: the new one only
        assert errors == 0 and changed > 0
        for node in lab.hosts:
            want = {o for o in lab.hosts if o != node}
            poll(lambda n=node, w=want: lab.established(n) == w, timeout=30, what=f"{node} meshed, new password")  # type: ignore[misc]
        lost = pings.lost()
        gaps = pings.gaps()
    print(f"\npassword rotation: lost {lost} {gaps}")  # noqa: T201
    if not all(n <= 10 for n in lost.values()):
        for node in ("node1", *(n for n, k in lost.items() if k > 10)):  # (the journals say when each link re-keyed)
            journal = lab.ssh(node, "journalctl -u weave-node --no-pager -o short-iso-precise -n 80").stdout
            print(f"== {node}\n{journal}")  # noqa: T201
    assert {node: lab.pid(node) for node in lab.hosts} == before, "a router restarted"
    for node in lab.hosts:
        assert not lab.host(node).file("/etc/weave-node/password.previous").exists
        journal = lab.ssh(node, "journalctl -u weave-node --no-pager -o cat").stdout
        assert "first-password" not in journal and "second-password" not in journal
    # Step 2 re-establishes every connection made with the old password, and the sleeve's link to each peer is
    # re-keyed: make-before-break (the old keys open and seal until the peer is heard with the new ones, a link
    # whose connection went lingers for the new one, and every generation of keys still handing over opens: two
    # routers that dialled each other at once may each have seen other connections). Measured 0-5 replies lost at
    # 10/s (0 in the lab test, 0 and 5 in the benchmark under load; it was 1-12 before; 11 once under CI's load,
    # when a sleeve destination that briefly left the topology lost its lingering link's route: now 0 in
    # bench/rotation_bench.py under load). Bound: 10 per peer (1 s).
    assert all(n <= 10 for n in lost.values()), lost
    assert lab.roll() == (0, 0)


def test_encryption_is_turned_off_and_on_again_without_a_partition(lab: Day2Lab) -> None:
    """Off: peers without a password taken (a reload), then no password (restarts: the fast datapath comes back).
    On: the password with peers without one taken (restarts), then only encrypted peers (a reload). Pods keep
    their addresses and reach each other after every step; the loss is the restarts'."""
    pods = dict(lab.pods)
    password = lab.password
    pids = {node: lab.pid(node) for node in lab.hosts}

    def meshed(info: str) -> None:
        for node in lab.hosts:
            want = {o: info for o in lab.hosts if o != node}
            poll(lambda n=node, w=want: lab.infos(n) == w, timeout=60, what=f"{node}: {info} with all")  # type: ignore[misc]

    def everyone_reaches() -> None:
        for a in lab.hosts:
            for b in lab.hosts:
                if a != b:
                    poll(lambda a=a, b=b: lab.reaches(a, b), timeout=30, what=f"{a} -> {b}")  # type: ignore[misc]

    def mixed(node: str, others: tuple[str, ...], info: str) -> None:
        """One host switched, the others not yet: they talk (mesh and pods, both ways)."""
        want = {o: info for o in lab.hosts if o != node}
        poll(lambda: lab.infos(node) == want, timeout=60, what=f"{node}: {info} with the others")
        for other in others:
            for a, b in ((node, other), (other, node)):
                try:
                    poll(lambda a=a, b=b: lab.reaches(a, b), timeout=30, what=f"{a} -> {b} while switching")  # type: ignore[misc]
                except AssertionError:
                    _network_report(lab, a, b)
                    raise

    losses: list[dict[str, int]] = []
    gaps: list[dict[str, list[str]]] = []
    with Pings(lab, "node1", ("node2", "node3")) as pings:
        assert lab.roll("weave_accept_unencrypted=true")[1] == 0  # off, 1: applied live
        assert {node: lab.pid(node) for node in lab.hosts} == pids, "a reload restarted a router"
        lab.password = None
        assert lab.roll(limit="node1")[1] == 0  # off, 2: node1 first, without a password (a restart)
        mixed("node1", ("node2", "node3"), "unencrypted, v2")
        assert lab.roll()[1] == 0  # off, 2: the others
        meshed("unencrypted, v2")
        everyone_reaches()
        losses.append(pings.lost())
        gaps.append(pings.gaps())
    poll(lambda: all(p["mode"] in ("fastdp", "direct") for p in lab.status("node1")["datapath"]["peers"]), timeout=60,
         what="the fast datapath back")  # fmt: skip
    assert len(lab.status("node1")["datapath"]["peers"]) == len(lab.hosts) - 1
    with Pings(lab, "node1", ("node2", "node3")) as pings:
        lab.password = password
        assert lab.roll("weave_accept_unencrypted=true", limit="node1")[1] == 0  # on, 1: node1 first
        mixed("node1", ("node2", "node3"), "unencrypted, v2")  # its peers reach it through the sleeve
        _network_report(lab, "node1", "node3")  # (mid-switch: printed only if the test fails)
        assert lab.roll("weave_accept_unencrypted=true")[1] == 0  # on, 1: the others
        meshed("encrypted, v2")
        assert lab.roll()[1] == 0  # on, 2: only encrypted peers (a reload)
        meshed("encrypted, v2")
        everyone_reaches()
        losses.append(pings.lost())
        gaps.append(pings.gaps())
    print(f"\nencryption off: lost {losses[0]} {gaps[0]}; on: lost {losses[1]} {gaps[1]}")  # noqa: T201
    if not all(n <= 100 for loss in losses for n in loss.values()):
        _network_report(lab, "node1", "node2")  # (the routers' journals say when each peer changed mode)
    assert all(n <= 100 for loss in losses for n in loss.values()), losses  # the restarts' sleeve traffic, at most
    for node in lab.hosts:
        assert lab.status(node)["router"]["encryption"] is True
        rows = json.loads(lab.ssh(node, f"{CLI} ipam allocations --json").stdout)
        assert {r["container_id"]: r["ip"] for r in rows}[POD] == pods[node], f"{node}'s pod kept its address"
    assert lab.roll() == (0, 0)
