from __future__ import annotations

import json

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
