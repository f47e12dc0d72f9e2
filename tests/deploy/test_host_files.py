"""weave_node_deploy/host_files.py and the shell checks both engines run on hosts (versions.command,
host_files.plugin_check), run here by a real shell against temporary directories."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from weave_node_deploy import host_files, settings, versions


def _sh(command: str) -> str:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def _plugin_site(prefix: Path, data: bytes = b"\x7fELF ours") -> Path:
    packaged = prefix / "venv/lib/python3.11/site-packages/weave_node/cni/bin/weave-net-linux-amd64"
    packaged.parent.mkdir(parents=True)
    packaged.write_bytes(data)
    return packaged


@pytest.mark.parametrize(
    ("installed", "mode", "answer"),
    [(b"\x7fELF ours", 0o755, "yes"), (b"\x7fELF ours", 0o644, "no"), (b"\x7fELF older", 0o755, "no"), (None, 0, "no")],
)
def test_the_plugin_check_says_yes_only_for_the_routers_binary_mode_0755(
    tmp_path: Path, installed: bytes | None, mode: int, answer: str
) -> None:
    prefix, bin_dir = tmp_path / "prefix", tmp_path / "cni bin"  # (a space: quoted)
    _plugin_site(prefix)
    bin_dir.mkdir()
    if installed is not None:
        (bin_dir / "weave-net").write_bytes(installed)
        (bin_dir / "weave-net").chmod(mode)
    assert _sh(host_files.plugin_check(str(prefix), str(bin_dir))) == answer


def test_the_plugin_check_says_no_without_a_router(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/weave-net").write_bytes(b"\x7fELF")
    (tmp_path / "bin/weave-net").chmod(0o755)
    assert _sh(host_files.plugin_check(str(tmp_path / "prefix"), str(tmp_path / "bin"))) == "no"


def test_the_version_command_reads_the_distribution_then_the_command(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    assert versions.parse(_sh(versions.command(str(prefix)))) is None  # nothing installed
    script = prefix / "venv/bin/weave-node"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho 'weave-node 0.1.9'\n")
    script.chmod(0o755)
    assert versions.parse(_sh(versions.command(str(prefix)))) == (0, 1, 9)
    (prefix / "venv/lib/python3.11/site-packages/weave_node-0.2.0.dist-info").mkdir(parents=True)
    assert versions.parse(_sh(versions.command(str(prefix)))) == (0, 2, 0)


def _data(**extra: Any) -> dict[str, Any]:
    return settings.typed({**settings.DEFAULTS, "weave_peers": ["198.18.0.2"], **extra})


def test_without_passwords_their_files_go_and_with_one_it_comes_from_its_file() -> None:
    entries = {e.path: e for e in host_files.configuration(_data())}
    assert entries[host_files.PASSWORD].state == entries[host_files.PREVIOUS_PASSWORD].state == "absent"
    assert not [x for x in entries[host_files.ENV].content.splitlines() if x.startswith("WEAVE_PASSWORD_FILE=")]
    entries = {e.path: e for e in host_files.configuration(_data(weave_password_file="/secret/pw"))}  # noqa: S106
    password = entries[host_files.PASSWORD]
    assert (password.state, password.mode, password.source, password.content) == ("file", 0o600, "/secret/pw", "")
    assert f"WEAVE_PASSWORD_FILE={host_files.PASSWORD}" in entries[host_files.ENV].content.splitlines()
    assert entries[host_files.UNIT].needs == (host_files.DAEMON_RELOAD, host_files.RESTART)
    assert host_files.RELOAD in entries[host_files.MESH_ENV].needs


def test_the_conflist_goes_last_after_the_plugins_it_names() -> None:
    entries = host_files.cni(_data())
    assert entries[-1].path.endswith("/10-weave.conflist")
    assert [e.path.rsplit("/", 1)[1] for e in entries if e.state == "link"] == list(host_files.STANDARD_PLUGINS)
