"""Markers follow the directory a test lives in: tests/unit -> unit, tests/lab -> lab, ..."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MARK_BY_DIR = {
    "unit": "unit",
    "sim": "sim",
    "netns": "netns",
    "lab": "lab",
    "deploy": "unit",
    "e2e": "lab",
    "cni": "netns",
}
ROOT_ONLY = {"netns", "lab"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        rel = Path(str(item.fspath)).relative_to(tests_dir)
        mark = MARK_BY_DIR.get(rel.parts[0]) if len(rel.parts) > 1 else None
        if mark:
            item.add_marker(getattr(pytest.mark, mark))
        if mark in ROOT_ONLY and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason=f"{mark} tests need root"))
