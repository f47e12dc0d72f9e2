"""Molecule's verify: the same testinfra suite as the pyinfra end-to-end test (tests/e2e/verify.py), on the hosts
of Molecule's inventory (the lab)."""

import sys
from pathlib import Path
from typing import Any

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.e2e import verify


@pytest.fixture(scope="module")
def hosts(request: pytest.FixtureRequest) -> dict[str, Any]:
    inventory = request.config.option.ansible_inventory
    return {
        name: testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory)
        for name in ("node1", "node2", "node3")
    }


def test_the_rolled_out_network_works(hosts: dict[str, Any]) -> None:
    verify.suite(hosts, outside="198.18.0.254")  # the lab's underlay gateway
