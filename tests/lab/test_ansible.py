"""The Ansible rollout on the lab (`weave-node rollout --engine ansible`: weave_node_deploy/ansible through
ansible-runner, the inventory generated from inventory/lab.py), against the pyinfra rollout on a twin lab: the
same bytes on the hosts, failures that name host, task and reason before anything is written, and Molecule's
scenario."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator

import pytest
import testinfra

from tests.e2e import verify
from tests.helpers import REPO, run_cli
from tests.lab.userland import FRESH_PATH
from weave_node.cni import gobuild

HOSTS = 3
NODES = [f"node{i}" for i in range(1, HOSTS + 1)]
PASSWORD = "ansible-and-pyinfra-share-this-3b9e"  # noqa: S105 - a test's password, to search for
# Every file the two engines write from weave_node_deploy/templates/ and the repository (plus the password, copied).
FILES = [
    "/etc/weave-node/weave-node.env",
    "/etc/weave-node/mesh.env",
    "/etc/systemd/system/weave-node.service",
    "/etc/cni/net.d/10-weave.conflist",
    "/opt/cni/bin/weave-net",
    "/etc/modules-load.d/weave-node.conf",
    "/etc/sysctl.d/90-weave-node.conf",
    "/etc/weave-node/password",
    "/opt/weave-node/venv/.weave-node-wheels",
]


def _lab_up(name: str, hosts: int = HOSTS) -> str:
    """Bring the lab up; its ssh_config, as the lab reports it."""
    run_cli("weave-node", "lab", "up", "--name", name, "--hosts", str(hosts), check=True)
    status = run_cli("weave-node", "lab", "status", "--name", name, "--json", check=True)
    ssh_config: str = json.loads(status.stdout)["ssh_config"]
    return ssh_config


def _ssh(ssh_config: str, host: str, command: str) -> str:
    out = subprocess.run(
        ["ssh", "-F", ssh_config, host, command], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout


def _rollout(lab: str, engine: str, *data: str, remove: bool = False) -> subprocess.CompletedProcess[str]:
    args = ["weave-node", "rollout", "--engine", engine, "--inventory", "inventory/lab.py", *(["--remove"] * remove)]
    for item in data:
        args += ["--data", item]
    return run_cli(*args, env={"WEAVE_LAB": lab})


def _files(ssh_config: str, host: str) -> dict[str, str]:
    """path -> "mode owner group sha256" (or "missing") on that host."""
    script = "; ".join(
        f"if [ -e {p} ]; then echo {p} $(stat -c '%a %U %G' {p}) $(sha256sum < {p} | cut -d' ' -f1); "
        f"else echo {p} missing; fi"
        for p in FILES
    )
    out = _ssh(ssh_config, host, script)
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()}


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tag = os.getpid() % 100000
    names = {"pyinfra": f"p{tag}", "ansible": f"a{tag}"}
    try:
        configs = {engine: _lab_up(name) for engine, name in names.items()}
        password = tmp_path_factory.mktemp("secret") / "password"
        password.write_text(PASSWORD + "\n")
        password.chmod(0o600)
        yield {"password": str(password), **{f"{e}_lab": n for e, n in names.items()}, **configs}
    finally:
        for name in names.values():
            run_cli("weave-node", "lab", "down", "--name", name, "-q")


def test_a_bad_range_fails_naming_host_task_and_reason_and_writes_nothing(labs: dict[str, str]) -> None:
    out = _rollout(labs["ansible_lab"], "ansible", "weave_ipalloc_range=10.32.0.0/33")
    assert out.returncode != 0
    for node in NODES:
        assert re.search(
            rf"{node}: task 'Settings \(defaults, types, validation.*\)' failed: invalid weave-node settings: "
            rf"{node}: weave_ipalloc_range '10.32.0.0/33' is not a CIDR",
            out.stderr,
        ), out.stdout + out.stderr
        left = _ssh(labs["ansible"], node, "ls -d /etc/weave-node /opt/weave-node /etc/cni/net.d/* 2>/dev/null; :")
        assert left.strip() == "", f"{node} was touched: {left}"


def _data(labs: dict[str, str]) -> list[str]:
    return [
        "weave_mtu=1400",
        "weave_bandwidth=true",
        "weave_ipalloc_range=10.40.0.0/16",
        "weave_cni_version=1.1.0",
        # relative to where the rollout runs (the repository): ansible-runner runs elsewhere, and still finds it
        f"weave_password_file={os.path.relpath(labs['password'], REPO)}",
    ]


def test_both_engines_write_the_same_bytes(labs: dict[str, str]) -> None:
    data = _data(labs)
    pyinfra = _rollout(labs["pyinfra_lab"], "pyinfra", *data)
    assert pyinfra.returncode == 0, pyinfra.stdout + pyinfra.stderr
    ansible = _rollout(labs["ansible_lab"], "ansible", *data)
    assert ansible.returncode == 0, ansible.stdout + ansible.stderr
    assert f"rolled out to {HOSTS} host(s) with Ansible" in ansible.stdout
    assert PASSWORD not in ansible.stdout + ansible.stderr
    for node in NODES:
        theirs, ours = _files(labs["pyinfra"], node), _files(labs["ansible"], node)
        assert "missing" not in " ".join(ours.values()), ours
        assert ours == theirs, f"{node}: pyinfra {theirs} != ansible {ours}"
    env = _ssh(labs["ansible"], "node1", "cat /etc/weave-node/weave-node.env")
    assert "WEAVE_MTU=1400" in env and "IPALLOC_RANGE=10.40.0.0/16" in env and PASSWORD not in env
    plugin = _ssh(labs["ansible"], "node2", "sha256sum < /opt/cni/bin/weave-net").split()[0]
    # what the router's installer writes: the wheel's build of this source
    assert plugin == hashlib.sha256(gobuild.plugin().read_bytes()).hexdigest()

    again = _rollout(labs["ansible_lab"], "ansible", *data)
    assert again.returncode == 0, again.stdout + again.stderr
    for node in NODES:
        assert re.search(rf"^{node}: ok=\d+ changed=0 failed=0 unreachable=0$", again.stdout, re.M), again.stdout
    status = _ssh(labs["ansible"], "node3", "/opt/weave-node/venv/bin/weave-node status")
    assert "Encryption: enabled" in status and "2 established" in status, status


def test_a_live_setting_is_applied_by_reloads_and_restarts_no_router(labs: dict[str, str]) -> None:
    """The Ansible path of day 2 (tests/lab/test_day2.py proves the pyinfra one): a change of mesh.env (here
    weave_accept_unencrypted) reloads every router and restarts none; taking it back, the same."""
    data = _data(labs)

    def pids() -> dict[str, str]:
        return {n: _ssh(labs["ansible"], n, "systemctl show -p MainPID --value weave-node").strip() for n in NODES}

    before = pids()
    for extra, present in (("weave_accept_unencrypted=true", True), ("weave_accept_unencrypted=false", False)):
        out = _rollout(labs["ansible_lab"], "ansible", *data, extra)
        assert out.returncode == 0, out.stdout + out.stderr
        for node in NODES:
            assert re.search(rf"^  {node}: changed\s+Reload", out.stdout, re.M), out.stdout
            env = _ssh(labs["ansible"], node, "cat /etc/weave-node/mesh.env")
            assert ("WEAVE_ACCEPT_UNENCRYPTED=1" in env) is present, env
        assert pids() == before, "a router restarted"
    for node in NODES:
        journal = _ssh(labs["ansible"], node, "journalctl -u weave-node --no-pager -o cat")
        assert journal.count("password settings changed") >= 2, journal[-2000:]


def test_removal_takes_everything_but_a_plugin_binary_and_changes_nothing_the_second_time(
    labs: dict[str, str],
) -> None:
    """`--remove` with Ansible resets the kernel state and removes our files, but a real plugin binary where the
    rollout had linked Debian's stays; a second removal changes nothing."""
    cfg = labs["ansible"]
    rolled_out = _rollout(labs["ansible_lab"], "ansible", *_data(labs))  # a no-op after the test above
    assert rolled_out.returncode == 0, rolled_out.stdout + rolled_out.stderr
    before = _ssh(cfg, "node1", "ip -o link show weave >/dev/null 2>&1 && echo bridge; :")
    assert before.strip() == "bridge", before
    # someone installs a real portmap binary over our link
    _ssh(cfg, "node1", "rm /opt/cni/bin/portmap && cp /usr/lib/cni/portmap /opt/cni/bin/portmap")
    out = _rollout(labs["ansible_lab"], "ansible", remove=True)
    assert out.returncode == 0, out.stdout + out.stderr
    for node in NODES:
        host = testinfra.get_host(f"paramiko://{node}", ssh_config=cfg)
        verify.nothing_of_ours_is_left(host, kept=("/opt/cni/bin/portmap",) if node == "node1" else ())
    kept = _ssh(cfg, "node1", "[ -f /opt/cni/bin/portmap ] && [ ! -L /opt/cni/bin/portmap ] && echo kept")
    assert kept.strip() == "kept"
    again = _rollout(labs["ansible_lab"], "ansible", remove=True)
    assert again.returncode == 0, again.stdout + again.stderr
    for node in NODES:
        assert re.search(rf"^{node}: ok=\d+ changed=0 failed=0 unreachable=0$", again.stdout, re.M), again.stdout


def test_molecule_converges_is_idempotent_and_verifies(labs: dict[str, str]) -> None:
    """Exactly as the README says, from a fresh shell (no venv on PATH: molecule needs Ansible's tools there)."""
    name = f"m{os.getpid() % 100000}"
    line = next(x for x in (REPO / "README.md").read_text().splitlines() if "molecule test" in x and x.startswith("("))
    command = line.split("#", 1)[0].strip()
    env = {"PATH": FRESH_PATH, "HOME": os.environ.get("HOME", "/root"), "WEAVE_LAB": name, "NO_COLOR": "1"}
    try:
        out = subprocess.run(
            ["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False
        )
    finally:
        run_cli("weave-node", "lab", "down", "--name", name, "-q")
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    assert out.returncode == 0, text[-6000:]
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert re.search(rf"{step}: Executed: Successful", text), f"{step}:\n{text[-4000:]}"
    assert re.search(r"1 passed", text), text[-4000:]
