"""What the router tells the overlay about its neighbours: values, not its connections or sockets."""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit.test_mesh_dispatch import PEER, Rig
from weave_node.mesh.neighbours import Neighbour, socket_host

pytestmark = pytest.mark.unit


def test_neighbours_are_immutable_values_of_the_established_connections() -> None:
    rig = Rig()
    (n,) = rig.router.neighbours()
    assert n == Neighbour(PEER.name, "198.51.100.7", "", frozenset(), None, encrypted=False)  # no password
    assert rig.router.neighbour(PEER.name) == n and rig.router.neighbour(PEER.name + 1) is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        n.remote_address = "x"  # type: ignore[misc]
    rig.router._drop(rig.pc, "test")
    rig.router._finish(rig.pc)  # what the connection's task does when its loop ends
    assert rig.router.neighbours() == ()
    rig.close()


def test_socket_host() -> None:
    assert socket_host(("192.0.2.1", 6783)) == "192.0.2.1"
    assert socket_host(("::1", 6783, 0, 0)) == "::1"
    assert socket_host(None) == socket_host("/run/sock") == ""
