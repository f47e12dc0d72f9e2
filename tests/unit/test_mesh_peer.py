"""Peer identity: name formatting and parsing, names from host ids, the host id file, UIDs."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weave_node.core.errors import ConfigError
from weave_node.mesh.hostid import load_or_create_host_id
from weave_node.mesh.peer import NAME_LIMIT, format_name, name_from_host_id, new_uid, parse_name


def test_format_name() -> None:
    assert format_name(0x0A0B0C0D0E0F) == "0a:0b:0c:0d:0e:0f"
    assert format_name(0) == "00:00:00:00:00:00"
    assert format_name(NAME_LIMIT - 1) == "ff:ff:ff:ff:ff:ff"


@pytest.mark.parametrize("bad", [-1, NAME_LIMIT, 2**64])
def test_format_name_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError):
        format_name(bad)


@given(st.integers(min_value=0, max_value=NAME_LIMIT - 1))
def test_parse_format_round_trip(name: int) -> None:
    text = format_name(name)
    assert parse_name(text) == name
    assert parse_name(text.upper()) == name


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "aa:bb:cc:dd:ee",
        "aa:bb:cc:dd:ee:ff:00",
        "aa:bb:cc:dd:ee:fg",
        "a:bb:cc:dd:ee:ff",
        "aaa:bb:cc:dd:ee:ff",
        "aa-bb-cc-dd-ee-ff",
        "aabbccddeeff",
        " aa:bb:cc:dd:ee:ff",
        "+a:bb:cc:dd:ee:ff",
        "\u0660\u0660:bb:cc:dd:ee:ff",  # non-ASCII digits
    ],
)
def test_parse_name_rejects(bad: str) -> None:
    with pytest.raises(ConfigError, match="bad peer name"):
        parse_name(bad)


def test_name_from_host_id_is_stable_unicast_and_local() -> None:
    a = name_from_host_id(b"\x01" * 16)
    assert a == name_from_host_id(b"\x01" * 16)
    assert a != name_from_host_id(b"\x02" * 16)
    assert 0 <= a < NAME_LIMIT


@given(st.binary(min_size=0, max_size=32))
def test_name_from_host_id_bits(host_id: bytes) -> None:
    first_octet = name_from_host_id(host_id) >> 40
    assert first_octet & 0x02  # locally administered
    assert not first_octet & 0x01  # not multicast


def test_host_id_created_then_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "state" / "host-id"
    first = load_or_create_host_id(path)
    assert len(first) == 16
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text() == first.hex() + "\n"
    assert load_or_create_host_id(path) == first
    assert sorted(p.name for p in path.parent.iterdir()) == ["host-id"]  # no temporary file left


def test_host_id_accepts_upper_case_and_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "host-id"
    path.write_text("  " + "AB" * 16 + "\n\n")
    assert load_or_create_host_id(path) == b"\xab" * 16


@pytest.mark.parametrize("content", ["", "zz" * 16, "ab" * 15, "ab" * 17, "ab" * 8 + " " + "ab" * 8])
def test_host_id_garbage_names_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "host-id"
    path.write_text(content)
    with pytest.raises(ConfigError, match=str(path)):
        load_or_create_host_id(path)
    assert path.read_text() == content  # left alone


def test_host_id_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "host-id"
    path.write_bytes(b"\xff\xfe" * 16)
    with pytest.raises(ConfigError, match=str(path)):
        load_or_create_host_id(path)


def test_host_id_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="host id file"):
        load_or_create_host_id(tmp_path / "file" / "host-id")


def test_host_id_failed_rename_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: str, dst: str) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(ConfigError, match=f"cannot write host id file {tmp_path / 'host-id'}"):
        load_or_create_host_id(tmp_path / "host-id")
    assert list(tmp_path.iterdir()) == []


def test_new_uid_nonzero_64_bit_and_deterministic() -> None:
    uids = [new_uid(random.Random(seed)) for seed in range(50)]
    assert all(0 < u < 2**64 for u in uids)
    assert uids == [new_uid(random.Random(seed)) for seed in range(50)]
    assert len(set(uids)) == 50


def test_new_uid_skips_zero() -> None:
    class ZeroFirst(random.Random):
        calls = 0

        def getrandbits(self, k: int) -> int:
            self.calls += 1
            return 0 if self.calls == 1 else 7

    assert new_uid(ZeroFirst()) == 7
