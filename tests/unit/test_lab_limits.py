"""The lab raises the machine's inotify instance limit when it is too low for many systemd hosts (never lowers it)."""

from __future__ import annotations

from pathlib import Path

from weave_node.lab import system


def test_a_low_inotify_limit_is_raised_once_and_a_high_one_left_alone(tmp_path: Path) -> None:
    limit = tmp_path / "max_user_instances"
    limit.write_text("128\n")
    assert system.raise_inotify_instances(limit, wanted=8192) == (
        "raised fs.inotify.max_user_instances from 128 to 8192 (systemd in each lab host needs some)"
    )
    assert limit.read_text() == "8192\n"
    assert system.raise_inotify_instances(limit, wanted=8192) is None
    limit.write_text("65536\n")
    assert system.raise_inotify_instances(limit, wanted=8192) is None
    assert limit.read_text() == "65536\n"
    assert system.raise_inotify_instances(tmp_path / "missing") is None
