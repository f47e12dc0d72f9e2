"""The runtime archive (weave_node_deploy/runtime.py) built from the real wheelhouse, and its install script run
for real into a prefix here (this machine's python3, as a host's): what both engines push and run."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from weave_node_deploy import runtime, wheelhouse


@pytest.fixture(scope="module")
def archive() -> Path:
    return runtime.build(wheelhouse.build())


def _install(
    prefix: Path, archive: Path, digest: str | None = None, python: str | None = None, machine: str | None = None
) -> str:
    (prefix / runtime.ARCHIVE).write_bytes(archive.read_bytes())
    script = runtime.install_script(str(prefix), digest or runtime.sha256(archive), python, machine)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    return out.stderr if out.returncode else ""


def test_the_archive_installs_a_venv_that_runs_without_pip(archive: Path, tmp_path: Path) -> None:
    wheels = wheelhouse.build()
    assert runtime.build(wheels) == archive  # cached: the same file
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert all(m.uid == 0 and m.gid == 0 for m in tar.getmembers())
    assert "bin/weave-node" in names and runtime.MARKER in names
    assert "bin/pip" in names  # a venv as `python3 -m venv` makes it: an older rollout can roll back
    assert any(n.endswith(".pyc") for n in names)  # compiled here: hosts' /opt is read-only to the router
    prefix = tmp_path / "opt"
    prefix.mkdir()
    assert _install(prefix, archive) == ""
    venv = prefix / "venv"
    assert (venv / runtime.MARKER).read_bytes() == (wheels / "SHA256SUMS").read_bytes()
    version = subprocess.run(
        [str(venv / "bin" / "weave-node"), "--version"], capture_output=True, text=True, check=False
    )
    assert version.returncode == 0 and version.stdout.startswith("weave-node ")
    link = tmp_path / "weave-node"  # as /usr/local/bin links to it
    link.symlink_to(venv / "bin" / "weave-node")
    assert (
        subprocess.run([str(link), "--version"], capture_output=True, text=True, check=False).stdout == version.stdout
    )
    plugin = subprocess.run(
        [str(venv / "bin" / "weave-node"), "install-cni-plugin", "--dir", str(tmp_path / "cni")],
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )
    assert plugin.returncode == 0, plugin.stderr  # the wheel's static plugin, no Go on a host
    pip = subprocess.run([str(venv / "bin" / "pip"), "list"], capture_output=True, text=True, check=False, cwd="/")
    assert pip.returncode == 0 and "weave-node" in pip.stdout and "pyroute2" in pip.stdout, pip.stderr
    assert sorted(p.name for p in prefix.iterdir()) == ["venv"]  # the archive is gone, nothing half-made


def test_a_bad_archive_or_another_python_changes_nothing(archive: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "opt"
    prefix.mkdir()
    assert _install(prefix, archive) == ""
    before = sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*"))
    err = _install(prefix, archive, digest="0" * 64)
    assert "FAILED" in err or "did NOT match" in err
    err = _install(prefix, archive, python="3.99")
    assert "built for Python 3.99" in err and "this host has python3" in err
    err = _install(prefix, archive, machine="riscv64")  # compiled wheels and the plugin of another CPU
    assert "on riscv64" in err
    (prefix / runtime.ARCHIVE).unlink()
    assert sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*")) == before


def test_a_run_cut_off_between_the_renames_is_repaired(archive: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "opt"
    prefix.mkdir()
    assert _install(prefix, archive) == ""
    (prefix / "venv").rename(prefix / "venv.old")  # the old venv moved aside, the new one never moved in
    (prefix / "venv.new").mkdir()
    assert _install(prefix, archive, digest="0" * 64) != ""  # even a run that then fails puts the old one back
    assert (prefix / "venv" / "bin" / "weave-node").exists() and not (prefix / "venv.old").exists()
    assert _install(prefix, archive) == ""
    assert sorted(p.name for p in prefix.iterdir()) == ["venv"]
