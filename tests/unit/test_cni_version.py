from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import run_cli


def test_version_lists_every_supported_spec_version() -> None:
    proc = run_cli("weave-net", env={"CNI_COMMAND": "VERSION"}, input_text="{}")
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    assert doc["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_no_command_is_a_spec_error_with_code_4() -> None:
    proc = run_cli("weave-net", env={"CNI_COMMAND": ""}, input_text="{}")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["code"] == 4
    assert "CNI_COMMAND" in doc["msg"]
    assert "Traceback" not in proc.stderr


def test_the_hand_written_http_client_parses_plain_and_chunked_answers() -> None:
    from weave_node.cni.plugin import CniError, _parse_response

    plain = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ip": "x"}'
    assert _parse_response(plain) == (200, {"ip": "x"})
    chunked = b"HTTP/1.1 503 Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n" + b'5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n'
    assert _parse_response(chunked) == (503, {"a": 1})
    for bad in (b"", b"garbage", b"HTTP/1.1 200 OK\r\n\r\nnot json"):
        try:
            _parse_response(bad)
        except CniError as exc:
            assert exc.code == 999
        else:
            raise AssertionError(bad)


def test_install_cni_plugin_writes_one_executable_stdlib_file(tmp_path: Path) -> None:
    out = run_cli("weave-node", "install-cni-plugin", "--dir", str(tmp_path), check=True)
    plugin = tmp_path / "weave-net"
    assert out.stdout.strip() == f"installed {plugin}"
    assert plugin.stat().st_mode & 0o777 == 0o755
    assert plugin.read_text().splitlines()[0] == "#!/usr/bin/python3 -SI"
    version = subprocess.run([str(plugin)], env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True, check=True)
    assert json.loads(version.stdout)["supportedVersions"][-1] == "1.1.0"
    assert "weave_node" not in "".join(
        ln for ln in plugin.read_text().splitlines() if ln.startswith(("from", "import"))
    )
    again = run_cli("weave-node", "install-cni-plugin", "--dir", str(tmp_path), check=True)
    assert again.stdout.strip() == f"{plugin} is up to date"
    # --check (what the rollout asks before it runs the installer) changes nothing and says whether it would.
    assert run_cli("weave-node", "install-cni-plugin", "--dir", str(tmp_path), "--check").returncode == 0
    plugin.chmod(0o775)
    stale = run_cli("weave-node", "install-cni-plugin", "--dir", str(tmp_path), "--check")
    assert stale.returncode == 1 and str(plugin) in stale.stdout and plugin.stat().st_mode & 0o777 == 0o775
    assert run_cli("weave-node", "install-cni-plugin", "--dir", str(tmp_path)).stdout.strip() == f"installed {plugin}"
    assert plugin.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("module", ["weave_node.cni.plugin", "weave_node.core.facts"])
def test_the_bundle_refuses_a_weave_node_import_it_would_not_inline(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the plugin or in a module it inlines, at any indentation: under -SI it would be a traceback, not CNI JSON."""
    from weave_node.cni import bundle

    real = bundle._source
    lazy = "def later() -> None:\n    from weave_node.api import client\n"
    monkeypatch.setattr(bundle, "_source", lambda m: real(m) + (lazy if m == module else ""))
    with pytest.raises(RuntimeError, match="without `# inlined`"):
        bundle.script()
