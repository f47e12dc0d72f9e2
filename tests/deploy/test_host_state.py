"""host_state: the one command the pyinfra deploys run per host, run here by the real /bin/sh (dash on Debian)
against real files, and what its answer means for each kind of entry."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from weave_node_deploy import host_state
from weave_node_deploy.host_files import Entry

pytestmark = pytest.mark.unit


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()  # noqa: S324 - a checksum


def _look(paths: list[str], checks: dict[str, str]) -> host_state.State:
    out = subprocess.run(
        ["/bin/sh", "-c", host_state.script(paths, checks)], capture_output=True, text=True, check=True
    )
    return host_state.parse(out.stdout.splitlines(), paths, checks)


def test_each_kind_of_entry_is_seen_as_it_is(tmp_path: Path) -> None:
    conf, secret, link, gone = tmp_path / "a b.conf", tmp_path / "secret", tmp_path / "loopback", tmp_path / "gone"
    conf.write_text("x = 1\n")
    conf.chmod(0o644)
    secret.write_bytes(b"pass\r\n\xff")
    secret.chmod(0o600)
    link.symlink_to("/usr/lib/cni/loopback")
    odd = tmp_path / "fifo"
    os.mkfifo(odd)
    paths = [str(p) for p in (conf, secret, link, gone, tmp_path, odd)]
    checks = {
        "forward": "echo 1",
        "quiet": "false",
        "two": "printf 'first\\nsecond\\n'",
        "quoted": "echo \"$(echo 'a b')\"",
    }
    state = _look(paths, checks)
    assert state.checks == {"forward": "1", "quiet": "", "two": "first", "quoted": "a b"}
    uid, gid = os.getuid(), os.getgid()
    assert state.paths[str(conf)] == f"f 644 {uid} {gid} {_sha1(b'x = 1' + bytes([10]))}"
    assert host_state.satisfied(Entry(str(conf), "file", mode=0o644), state.paths[str(conf)], _sha1(b"x = 1\n"))
    assert not host_state.satisfied(Entry(str(conf), "file", mode=0o600), state.paths[str(conf)], _sha1(b"x = 1\n"))
    assert not host_state.satisfied(Entry(str(conf), "file", mode=0o644), state.paths[str(conf)], _sha1(b"x = 2\n"))
    wanted = _sha1(b"pass\r\n\xff")
    assert host_state.satisfied(Entry(str(secret), "file", mode=0o600), state.paths[str(secret)], wanted, (uid, gid))
    assert not host_state.satisfied(
        Entry(str(secret), "file", mode=0o600), state.paths[str(secret)], wanted, (uid + 1, gid)
    )
    assert host_state.file_sha1(state.paths[str(secret)]) == wanted
    assert host_state.satisfied(Entry(str(link), "link", target="/usr/lib/cni/loopback"), state.paths[str(link)])
    assert not host_state.satisfied(Entry(str(link), "link", target="/elsewhere"), state.paths[str(link)])
    assert not host_state.satisfied(Entry(str(link), "file"), state.paths[str(link)], wanted)  # a link is no file
    assert host_state.satisfied(Entry(str(gone), "absent"), state.paths[str(gone)])
    assert not host_state.satisfied(Entry(str(conf), "absent"), state.paths[str(conf)])
    assert host_state.satisfied(Entry(str(tmp_path), "directory", mode=tmp_path.stat().st_mode & 0o777),
                                state.paths[str(tmp_path)])  # fmt: skip
    assert state.paths[str(odd)] == "o" and host_state.file_sha1(state.paths[str(odd)]) is None
    assert not host_state.satisfied(Entry(str(odd), "absent"), state.paths[str(odd)])


def test_an_unknown_answer_means_the_operation_is_planned() -> None:
    """A path the host did not answer for (an interrupted connection, a shell that broke off) is never taken as
    satisfied: pyinfra's own operation then looks again."""
    state = host_state.parse(["P0 f 644 0 0 abc", "garbage", "C", "Cnope 1"], ["/a", "/b"], ["forward"])
    assert state.paths == {"/a": "f 644 0 0 abc"} and state.checks == {}
    for entry in (Entry("/b", "absent"), Entry("/b", "directory"), Entry("/b", "link", target="/x")):
        assert not host_state.satisfied(entry, state.paths.get("/b"))
    with pytest.raises(ValueError, match="check name"):
        host_state.script([], {"no good": "true"})
