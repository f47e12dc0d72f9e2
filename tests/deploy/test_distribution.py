"""The rollout as users install it: the wheel carries weave_node_deploy (deploys, templates, the Ansible role), the
wheel pushed to hosts is the same bytes whether built from a checkout or packed again from an installed wheel, the
collection builds from the same files and its plugins find the package, and tools outside the supported range fail
with a clear message. (On the lab, from a fresh virtualenv: tests/lab/test_rollout.py.)"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.helpers import BIN, REPO
from tests.lab.userland import build_wheel
from weave_node_deploy import collection, compat, paths, wheelhouse
from weave_node_deploy.facts import VERSION

INFO = f"weave_node-{VERSION}.dist-info"


def _entries() -> dict[str, bytes]:
    return {
        "weave_node/__init__.py": b"x = 1\n",
        "weave_node_deploy/templates/a.j2": b"{{ a }}\n",
        f"{INFO}/METADATA": b"Name: weave-node\nVersion: 0.2.0\n",
        f"{INFO}/WHEEL": b"Wheel-Version: 1.0\nTag: py3-none-any\n",
    }


def test_a_canonical_wheel_depends_only_on_its_entries() -> None:
    entries = _entries()
    one = wheelhouse.canonical_wheel(entries)
    other = wheelhouse.canonical_wheel(dict(reversed(list(entries.items()))))
    assert one == other
    with zipfile.ZipFile(io.BytesIO(one)) as zf:
        names = zf.namelist()
        assert names[-1] == f"{INFO}/RECORD" and names[:2] == [
            "weave_node/__init__.py",
            "weave_node_deploy/templates/a.j2",
        ]
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        record = zf.read(f"{INFO}/RECORD").decode().splitlines()
    assert record[0].startswith("weave_node/__init__.py,sha256=") and record[0].endswith(",6")
    assert record[-1] == f"{INFO}/RECORD,,"
    assert wheelhouse.wheel_files(one) == entries  # (RECORD is written again, never carried over)
    changed = wheelhouse.canonical_wheel({**entries, "weave_node/__init__.py": b"x = 2\n"})
    assert changed != one


def test_a_wheel_without_one_dist_info_is_refused() -> None:
    with pytest.raises(ValueError, match=r"one \.dist-info"):
        wheelhouse.canonical_wheel({"weave_node/__init__.py": b""})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's wheel, as `pip wheel` builds it (no dependencies), from a copy of the tree."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_hosts_get_the_router_without_the_rollout_and_the_readme(built: Path) -> None:
    """Editing the rollout or the README changes nothing hosts install (no router restarts for it)."""
    files = wheelhouse.wheel_files(built.read_bytes())
    hosts = wheelhouse.for_hosts(files)
    assert not [n for n in hosts if n.startswith("weave_node_deploy/")]
    assert any(n.startswith("weave_node/") for n in hosts)
    assert b"weave_node_deploy" not in hosts[f"{INFO}/top_level.txt"]
    assert b"weave-node" in hosts[f"{INFO}/METADATA"] and b"Quick start" not in hosts[f"{INFO}/METADATA"]
    assert b"Quick start" in files[f"{INFO}/METADATA"]  # (what was left out was there)
    assert b"Generator" not in hosts[f"{INFO}/WHEEL"]
    edited = {**files, f"{INFO}/METADATA": files[f"{INFO}/METADATA"] + b"\nmore readme\n"}
    edited["weave_node_deploy/cli.py"] = b"# edited\n"
    assert wheelhouse.canonical_wheel(wheelhouse.for_hosts(edited)) == wheelhouse.canonical_wheel(hosts)
    installer_extra = {**files, f"{INFO}/uv_cache.json": b'{"timestamp": 1}', f"{INFO}/INSTALLER": b"uv\n"}
    assert wheelhouse.for_hosts(installer_extra) == hosts


def test_the_wheel_carries_the_deploys_their_templates_and_the_role(built: Path) -> None:
    names = set(zipfile.ZipFile(built).namelist())
    ours = {str(p.relative_to(REPO)) for p in paths.PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert ours <= names, sorted(ours - names)
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]


def test_an_installed_wheel_packs_again_into_the_same_bytes(built: Path, tmp_path: Path) -> None:
    """What hosts get from `pip install weave-node[rollout]` equals what they get from a checkout: same checksums."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin/pip"), "install", "-qq", "--no-deps", str(built)], check=True, timeout=300)
    script = (
        "import hashlib, json; from weave_node_deploy import wheelhouse as w; n, d = w.installed_wheel(); "
        "print(json.dumps([str(w.source_tree()), n, hashlib.sha256(d).hexdigest()]))"
    )
    out = subprocess.run([str(venv / "bin/python"), "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         check=True, timeout=60)  # fmt: skip
    tree, name, digest = json.loads(out.stdout)
    assert tree == "None"  # installed: no checkout
    assert name == built.name
    import hashlib

    hosts = wheelhouse.canonical_wheel(wheelhouse.for_hosts(wheelhouse.wheel_files(built.read_bytes())))
    assert digest == hashlib.sha256(hosts).hexdigest()


def test_pyinfra_outside_the_supported_range_stops_the_import_clearly(tmp_path: Path) -> None:
    """A pyinfra 2 on the path (as a --no-deps install or another tool would leave it): the deploys do not load."""
    site = tmp_path / "site"
    (site / "pyinfra").mkdir(parents=True)
    (site / "pyinfra" / "__init__.py").write_text("raise SystemExit('pyinfra itself must not even be imported')\n")
    (site / "pyinfra-2.9.2.dist-info").mkdir()
    (site / "pyinfra-2.9.2.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: pyinfra\nVersion: 2.9.2\n")
    out = subprocess.run(
        [str(BIN / "python"), "-c", "from weave_node_deploy import rollout"],
        capture_output=True, text=True, env={"PYTHONPATH": f"{site}:{REPO}", "PATH": "/usr/bin:/bin"}, timeout=60,
        check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "weave_node_deploy needs pyinfra >= 3.2, < 4, not pyinfra 2.9.2" in out.stderr, out.stderr
    assert "UnsupportedTool" in out.stderr
    assert compat.pyinfra_problem("3.10.0") is None
    assert compat.pyinfra_problem("4.0.0") is not None
    assert "not installed" in (compat.pyinfra_problem(None) or "")


def test_a_collection_of_another_version_than_the_package_is_refused_clearly() -> None:
    assert compat.collection_problem(None) is None
    assert compat.collection_problem(VERSION) is None
    problem = compat.collection_problem("9.9.9") or ""
    assert "pip install 'weave-node[rollout]==9.9.9'" in problem and VERSION in problem


def test_the_collection_is_built_from_the_roles_own_files(tmp_path: Path) -> None:
    tarball = collection.build(tmp_path)
    assert tarball.name == f"weave_node-rollout-{VERSION}.tar.gz"
    with tarfile.open(tarball) as tar:
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
        assert manifest["collection_info"]["version"] == VERSION
        runtime = yaml.safe_load(tar.extractfile("meta/runtime.yml"))  # type: ignore[arg-type]
        assert runtime == {"requires_ansible": ">=2.19"}
        role = paths.ANSIBLE / "roles" / "weave_node"
        for task in (role / "tasks").glob("*.yml"):
            assert tar.extractfile(f"roles/weave_node/tasks/{task.name}").read() == task.read_bytes()  # type: ignore[union-attr]
        for plugin in (role / "action_plugins").glob("*.py"):
            assert tar.extractfile(f"plugins/action/{plugin.name}").read() == plugin.read_bytes()  # type: ignore[union-attr]
        for module in (role / "library").glob("*.py"):
            assert tar.extractfile(f"plugins/modules/{module.name}").read() == module.read_bytes()  # type: ignore[union-attr]
        assert not [n for n in tar.getnames() if "/library/" in n or "/action_plugins/" in n]
        site = yaml.safe_load(tar.extractfile("playbooks/site.yml"))  # type: ignore[arg-type]
        assert site[0]["roles"] == ["weave_node.rollout.weave_node"]


def test_the_installed_collection_validates_with_the_packages_code_before_touching_a_host(tmp_path: Path) -> None:
    """ansible-galaxy installs the tarball; a playbook of the user's own, with a bad setting, fails at the
    collection's first task with the package's message, naming host and setting (the host is never contacted)."""
    tarball = collection.build(tmp_path / "dist")
    collections = tmp_path / "collections"
    subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "-p", str(collections), str(tarball)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    (tmp_path / "inventory.ini").write_text(
        "n1 ansible_host=192.0.2.1 weave_address=192.0.2.1 weave_ipalloc_range=10.32.0.0/33\n"
    )
    (tmp_path / "site.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  roles:\n    - weave_node.rollout.weave_node\n"
    )
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "ANSIBLE_COLLECTIONS_PATH": str(collections), "HOME": str(tmp_path),
           "ANSIBLE_NOCOLOR": "1"}  # fmt: skip
    out = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "inventory.ini", "site.yml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "invalid weave-node settings" in text and "n1" in text and "weave_ipalloc_range" in text, text[-3000:]
    assert "UNREACHABLE" not in text
    # The collection's action finds its module (plugins/modules): the CNI files, written under a root of the test's.
    weave = {"weave_cni_bin_dir": "/opt/cni/bin", "weave_cni_conf_dir": "/etc/cni/net.d", "weave_cni_version": "1.1.0",
             "weave_hairpin": False, "weave_bandwidth": False, "weave_state_dir": "/var/lib/weave-node"}  # fmt: skip
    task = {"weave_node.rollout.weave_node_files": {"set": "cni", "root": str(tmp_path / "root")}}
    play = [{"hosts": "localhost", "gather_facts": False, "vars": {"weave": weave}, "tasks": [task]}]
    (tmp_path / "files.yml").write_text(yaml.safe_dump(play))
    out = subprocess.run(
        [str(BIN / "ansible-playbook"), "-c", "local", "-i", "localhost,", "-e",
         "ansible_python_interpreter=/usr/bin/python3", "files.yml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert (tmp_path / "root/etc/cni/net.d/10-weave.conflist").is_file()


def test_weave_node_rollout_without_the_rollout_tools_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hosts get the router's wheel, not the rollout extra: `weave-node rollout` there says what is missing."""
    import argparse

    from weave_node_deploy import cli

    monkeypatch.setattr(cli, "BIN", tmp_path)  # a Python without pyinfra beside it
    args = argparse.Namespace(engine="pyinfra", data=[], retire=None, inventory="inventory.py")
    assert cli.run(args) == 2
    assert "needs pyinfra beside this Python" in capsys.readouterr().err
    assert cli._missing_tool("ansible") is None  # (this venv has both)
