"""A user's own control machine, outside this repository: a fresh virtualenv with the built wheel installed with
its rollout extra, the built collection, and a project directory of the user's own (inventory, deploy file,
playbook). Commands run as from a fresh shell: a plain PATH, no PYTHONPATH, the project as the working directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import BIN, REPO
from weave_node_deploy import collection, wheelhouse

DEPLOY = '''"""My cluster's pod network."""
from weave_node_deploy import rollout

rollout()
'''
PLAYBOOK = """- hosts: all
  gather_facts: false
  any_errors_fatal: true
  roles:
    - weave_node.rollout.weave_node
"""
FRESH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Userland:
    venv: Path
    project: Path
    lab: str

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """A command of the venv's (`pyinfra`, `ansible-playbook`, ...), in the project, as from a fresh shell."""
        env = {"PATH": FRESH_PATH, "HOME": str(self.project), "WEAVE_LAB": self.lab, "LANG": "C.UTF-8",
               "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1"}  # fmt: skip
        for key in ("WEAVE_LAB_HOME", "WEAVE_NODE_WHEELHOUSE_CACHE", "PIP_CACHE_DIR", "XDG_CACHE_HOME"):
            if key in os.environ:
                env[key] = os.environ[key]
        env.setdefault("XDG_CACHE_HOME", str(Path.home() / ".cache"))  # pip's cache: the machine's, as a user's
        return subprocess.run(
            [str(self.venv / "bin" / args[0]), *args[1:]],
            cwd=self.project, env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip


def build_wheel(out: Path) -> Path:
    """This checkout's wheel as a release builds it (`pip wheel`, no dependencies), into `out`."""
    src = wheelhouse.copy_sources(REPO, out / "src")  # (pip builds in-tree: a stale build/ must not matter)
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "wheel", "-qq", "--no-deps", "--wheel-dir", str(out), str(src)],
        check=True, cwd=out, timeout=600,
    )  # fmt: skip
    (wheel,) = out.glob("weave_node-*.whl")
    return wheel


def build_dist(out: Path) -> tuple[Path, Path]:
    """(the wheel, the collection tarball) of this checkout, as a release would build them."""
    return build_wheel(out), collection.build(out)


def make(root: Path, lab: str) -> Userland:
    """The venv (the wheel with its rollout extra; dependencies from pip's cache or index) and the project: the
    lab's inventory as the user's own inventory.py, a 5-line deploy.py, the collection installed into
    ./collections by ansible-galaxy, hosts.yml (the same hosts for Ansible) and a playbook of the user's own."""
    dist, venv, project = root / "dist", root / "venv", root / "project"
    dist.mkdir()
    project.mkdir()
    wheel, tarball = build_dist(dist)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    user = Userland(venv, project, lab)
    out = user.run("pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[rollout]")
    assert out.returncode == 0, out.stdout + out.stderr
    shutil.copy(REPO / "inventory" / "lab.py", project / "inventory.py")
    (project / "deploy.py").write_text(DEPLOY)
    (project / "site.yml").write_text(PLAYBOOK)
    (project / "ansible.cfg").write_text("[defaults]\ncollections_path = ./collections\n")
    out = user.run("ansible-galaxy", "collection", "install", "-p", "./collections", str(tarball))
    assert out.returncode == 0, out.stdout + out.stderr
    # In the venv's own Python, as a user would convert it: the inventory file runs there (it patches paramiko
    # where it is loaded), not in this test process.
    script = (
        "import json, pathlib; from weave_node_deploy import inventory as i; "
        "inv = i.load('inventory.py', cwd='.'); base = pathlib.Path.cwd(); "
        "pathlib.Path('hosts.yml').write_text(json.dumps(i.to_ansible(inv, base=base), indent=1))"
    )
    out = user.run("python", "-c", script)
    assert out.returncode == 0, out.stdout + out.stderr
    return user
