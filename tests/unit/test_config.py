from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weave_node.config import from_env_and_flags
from weave_node.core.address import PeerAddress, parse_peer, parse_peers
from weave_node.core.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10.0.0.1", PeerAddress("10.0.0.1", 6783)),
        ("10.0.0.1:7000", PeerAddress("10.0.0.1", 7000)),
        ("node2", PeerAddress("node2", 6783)),
        ("node2:6790", PeerAddress("node2", 6790)),
        ("[fd00::1]:7000", PeerAddress("fd00::1", 7000)),
        ("fd00::1", PeerAddress("fd00::1", 6783)),
    ],
)
def test_peer_addresses_follow_weave_launch(text: str, want: PeerAddress) -> None:
    assert parse_peer(text) == want


@pytest.mark.parametrize("text", ["", "a:b", "host:0", "host:70000", "[fd00::1", "[::1]x", "host:²", "host:٣"])
def test_bad_peer_addresses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_peer(text)


@given(st.text(max_size=30))
def test_any_text_is_a_peer_address_or_a_config_error(text: str) -> None:
    """Addresses also come from gossiped topologies (learned peers): nothing else may escape."""
    with contextlib.suppress(ConfigError):
        parse_peer(text)


def test_weave_peers_env_accepts_spaces_and_commas() -> None:
    assert parse_peers("a, b:1 c") == (PeerAddress("a", 6783), PeerAddress("b", 1), PeerAddress("c", 6783))
    cfg = from_env_and_flags({"WEAVE_PEERS": "a b", "CONN_LIMIT": "7"}, {})
    assert cfg.peers == (PeerAddress("a", 6783), PeerAddress("b", 6783)) and cfg.conn_limit == 7
    cfg = from_env_and_flags({"WEAVE_PEERS": "a b"}, {"peers": ["c"]})
    assert cfg.peers == (PeerAddress("c", 6783),)  # flags win


def test_password_file_must_be_private(tmp_path: Path) -> None:
    pw = tmp_path / "password"
    pw.write_text("s3cret\n")
    os.chmod(pw, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        from_env_and_flags({}, {"password_file": str(pw)})
    os.chmod(pw, 0o600)
    cfg = from_env_and_flags({}, {"password_file": str(pw)})
    assert cfg.password == b"s3cret" and not cfg.warnings
    assert "s3cret" not in repr(cfg.warnings)


def test_password_in_environment_works_with_a_warning() -> None:
    cfg = from_env_and_flags({"WEAVE_PASSWORD": "pw"}, {})
    assert cfg.password == b"pw"
    assert any("WEAVE_PASSWORD_FILE" in w for w in cfg.warnings)
    assert not any("pw" in w.split() for w in cfg.warnings)


def test_status_api_stays_on_loopback_unless_told() -> None:
    with pytest.raises(ConfigError, match="not loopback"):
        from_env_and_flags({}, {"status_addr": "0.0.0.0:6784"})
    assert from_env_and_flags({}, {"status_addr": "0.0.0.0:6784", "status_any_addr": True}).status_addr
    assert from_env_and_flags({}, {"status_addr": "none"}).status_addr == ""


@pytest.mark.parametrize(("env", "msg"), [({"CONN_LIMIT": "x"}, "CONN_LIMIT"), ({"CONN_LIMIT": "-1"}, ">= 0")])
def test_bad_numbers(env: dict[str, str], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        from_env_and_flags(env, {})


def test_datapath_settings_use_weave_names() -> None:
    c = from_env_and_flags({"WEAVE_MTU": "1376", "WEAVE_NO_FASTDP": "1"}, {})
    assert (c.datapath, c.mtu, c.fastdp, c.peer_retain) == ("kernel", 1376, False, 60.0)
    c = from_env_and_flags({"WEAVE_MTU": ""}, {"datapath": "none", "peer_retain": 5})
    assert (c.datapath, c.mtu, c.fastdp, c.peer_retain) == ("none", None, True, 5.0)


@pytest.mark.parametrize(
    ("env", "msg"),
    [
        ({"WEAVE_MTU": "big"}, "WEAVE_MTU must be a number"),
        ({"WEAVE_MTU": "100"}, "between 576 and 65485"),
        ({"WEAVE_DATAPATH": "ovs"}, "--datapath must be 'kernel' or 'none'"),
    ],
)
def test_bad_datapath_settings(env: dict[str, str], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        from_env_and_flags(env, {})


def test_reclaim_of_a_replaced_host_is_on_unless_turned_off() -> None:
    assert from_env_and_flags({}, {}).ipam_reclaim_replaced is True
    for value in ("", "0", "false", "no", "False"):
        assert from_env_and_flags({"WEAVE_NO_IPAM_RECLAIM_REPLACED": value}, {}).ipam_reclaim_replaced is True, value
    for value in ("1", "yes", "true"):
        assert from_env_and_flags({"WEAVE_NO_IPAM_RECLAIM_REPLACED": value}, {}).ipam_reclaim_replaced is False, value
    assert from_env_and_flags({}, {"no_ipam_reclaim_replaced": "1"}).ipam_reclaim_replaced is False


def test_the_router_flag_turns_reclaim_of_a_replaced_host_off() -> None:
    from weave_node.cli import build_parser

    args = build_parser().parse_args(["router", "--no-ipam-reclaim-replaced", "--ipam-reclaim-after", "30"])
    flags = {k: v for k, v in vars(args).items() if k not in ("func", "cmd")}
    cfg = from_env_and_flags({}, flags)
    assert (cfg.ipam_reclaim_replaced, cfg.ipam_reclaim_after) == (False, 30.0)
    args = build_parser().parse_args(["router"])
    flags = {k: v for k, v in vars(args).items() if k not in ("func", "cmd")}
    assert from_env_and_flags({"WEAVE_NO_IPAM_RECLAIM_REPLACED": "1"}, flags).ipam_reclaim_replaced is False


@pytest.mark.parametrize(
    ("env", "msg"),
    [
        ({"WEAVE_IPAM_RECLAIM_AFTER": "soon"}, "must be seconds"),
        ({"WEAVE_IPAM_RECLAIM_AFTER": "-1"}, ">= 0"),
    ],
)
def test_bad_reclaim_after(env: dict[str, str], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        from_env_and_flags(env, {})


@pytest.mark.parametrize("replaced", [True, False])
def test_the_router_passes_the_setting_to_its_allocator(tmp_path: Path, replaced: bool) -> None:
    """daemon.make_ipam, the composition root, against a stand-in for the router (clock, channel, topology)."""
    from types import SimpleNamespace
    from typing import Any, cast

    from weave_node import daemon

    env = {"WEAVE_STATE_DIR": str(tmp_path), "WEAVE_NO_IPAM_RECLAIM_REPLACED": "" if replaced else "1"}
    config = from_env_and_flags(env, {"name": "02:00:00:00:00:01", "nickname": "node1"})
    identity = daemon.make_identity(config)
    router = SimpleNamespace(
        clock=SimpleNamespace(now=lambda: 100.0),
        register_channel=lambda name, service: None,
        topology=SimpleNamespace(records={}),
        on_change=[],
    )
    service = daemon.make_ipam(config, identity, cast(Any, router)).v4
    assert service.alloc.reclaim_replaced is replaced
    service.store.close()


def test_the_default_init_is_consensus_among_the_initial_peers_and_us() -> None:
    from weave_node.config import RouterConfig
    from weave_node.ipam.model import Init

    peers = (PeerAddress("192.0.2.1", 6783), PeerAddress("192.0.2.2", 6783))
    assert RouterConfig(peers=peers).init == Init("consensus", peers=3)
    assert from_env_and_flags({"WEAVE_PEERS": "192.0.2.1 192.0.2.2"}, {}).init == Init("consensus", peers=3)
    assert RouterConfig(peers=peers, ipalloc_init=Init("observer")).init == Init("observer")


def _secret(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_a_previous_password_is_accepted_beside_the_password(tmp_path: Path) -> None:
    new, old = _secret(tmp_path, "new", "n3w\n"), _secret(tmp_path, "old", "0ld\n")
    cfg = from_env_and_flags({"WEAVE_PASSWORD_FILE": new, "WEAVE_PREVIOUS_PASSWORD_FILE": old}, {})
    assert (cfg.password, cfg.previous_password) == (b"n3w", b"0ld")
    same = from_env_and_flags({"WEAVE_PASSWORD_FILE": new, "WEAVE_PREVIOUS_PASSWORD_FILE": new}, {})
    assert same.previous_password is None  # nothing more to accept
    with pytest.raises(ConfigError, match=r"previous password .* without a password"):
        from_env_and_flags({"WEAVE_PREVIOUS_PASSWORD_FILE": old}, {})
    os.chmod(old, 0o640)
    with pytest.raises(ConfigError, match="readable by others"):
        from_env_and_flags({"WEAVE_PASSWORD_FILE": new, "WEAVE_PREVIOUS_PASSWORD_FILE": old}, {})


def test_a_reload_request_is_read_into_live_settings(tmp_path: Path) -> None:
    from weave_node.config import live_settings

    new, old = _secret(tmp_path, "new", "n3w"), _secret(tmp_path, "old", "0ld")
    live = live_settings({"peers": ["10.0.0.1", "10.0.0.2:7000"], "password_file": new, "previous_password_file": old})
    assert live.peers == parse_peers("10.0.0.1 10.0.0.2:7000")
    assert (live.password, live.previous_password) == (b"n3w", b"0ld")
    assert live_settings({}).peers == () and live_settings({}).password is None
    empty = _secret(tmp_path, "empty", " \n")
    for doc, msg in [
        ({"peers": "10.0.0.1"}, "list of addresses"),
        ({"peers": ["two words"]}, "list of addresses"),
        ({"peers": ["10.0.0.1:99999"]}, "port"),
        ({"password_file": str(tmp_path / "missing")}, "No such file"),
        ({"password_file": empty}, "is empty"),
        ({"password_file": 7}, "must be a path"),
        ({"previous_password_file": old}, "without a password"),
        ({"peers": [], "surprise": 1}, "unknown reload settings: surprise"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            live_settings(doc)


def test_env_files_are_read_as_systemd_reads_ours(tmp_path: Path) -> None:
    from weave_node.core.envfile import parse_env, read_env_files

    assert parse_env("# c\n\nWEAVE_PEERS=10.0.0.1 10.0.0.2\nA='q'\nB=\"x y\"\nC=\n") == {
        "WEAVE_PEERS": "10.0.0.1 10.0.0.2",
        "A": "q",
        "B": "x y",
        "C": "",
    }
    with pytest.raises(ConfigError, match="line 2: not KEY=VALUE"):
        parse_env("A=1\nrm -rf /\n", "f")
    first, second = tmp_path / "a.env", tmp_path / "b.env"
    first.write_text("WEAVE_PEERS=old\nX=1\n")
    second.write_text("WEAVE_PEERS=new\n")
    assert read_env_files([first, second]) == {"WEAVE_PEERS": "new", "X": "1"}
    with pytest.raises(ConfigError, match="cannot read"):
        read_env_files([tmp_path / "missing.env"])


def test_accepting_unencrypted_peers_takes_only_known_words() -> None:
    assert from_env_and_flags({"WEAVE_ACCEPT_UNENCRYPTED": "1"}, {}).accept_unencrypted is True
    assert from_env_and_flags({"WEAVE_ACCEPT_UNENCRYPTED": "off"}, {}).accept_unencrypted is False
    assert from_env_and_flags({}, {}).accept_unencrypted is False
    with pytest.raises(ConfigError, match="WEAVE_ACCEPT_UNENCRYPTED must be"):
        from_env_and_flags({"WEAVE_ACCEPT_UNENCRYPTED": "maybe"}, {})
