"""Bad input gets a one-line error and a non-zero exit, never a traceback, and changes nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import run_cli


def assert_one_line_error(proc: object, fragment: str) -> None:
    out = proc.stdout + proc.stderr  # type: ignore[attr-defined]
    assert proc.returncode == 1, out  # type: ignore[attr-defined]
    assert "Traceback" not in out
    lines = [line for line in proc.stderr.splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1, lines
    assert lines[0].startswith("weave-node: error: ")
    assert fragment in lines[0]


def test_lab_up_with_zero_hosts(tmp_path: Path) -> None:
    proc = run_cli("weave-node", "lab", "up", "--hosts", "0", env={"WEAVE_LAB_HOME": str(tmp_path / "home")})
    assert_one_line_error(proc, "--hosts must be between 1 and 200, not 0")
    assert not (tmp_path / "home").exists()


def test_lab_ssh_when_no_lab_is_up(tmp_path: Path) -> None:
    proc = run_cli("weave-node", "lab", "ssh", "node1", "true", env={"WEAVE_LAB_HOME": str(tmp_path)})
    assert_one_line_error(proc, "lab 'lab' is not up: run `weave-node lab up`")


def test_bad_lab_name(tmp_path: Path) -> None:
    proc = run_cli("weave-node", "lab", "status", "--name", "Bad-Name", env={"WEAVE_LAB_HOME": str(tmp_path)})
    assert_one_line_error(proc, "bad lab name 'Bad-Name'")


@pytest.mark.skipif(os.geteuid() != 0, reason="the dependency check runs after the root check")
def test_missing_dependency_is_named_with_its_package(tmp_path: Path) -> None:
    # A PATH where only `ip` exists: every other tool the lab needs is missing.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ip").symlink_to("/usr/sbin/ip")
    home = tmp_path / "home"
    proc = run_cli("weave-node", "lab", "up", env={"PATH": str(bindir), "WEAVE_LAB_HOME": str(home)})
    assert_one_line_error(proc, "missing dependency: ")
    assert "systemd-nspawn (apt-get install systemd-container)" in proc.stderr
    assert "mmdebstrap (apt-get install mmdebstrap)" in proc.stderr
    assert not home.exists()


def test_lab_status_of_a_lab_that_is_not_up(tmp_path: Path) -> None:
    proc = run_cli("weave-node", "lab", "status", "--json", "--name", "nolab", env={"WEAVE_LAB_HOME": str(tmp_path)})
    assert proc.returncode == 3
    assert '"up": false' in proc.stdout
