"""`weave-node reload` against real routers (mesh and IPAM only): a peer list grown and shrunk, and a password
rotated in two steps, each without restarting a router; bad reloads change nothing; the endpoint is on the unix
socket only."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import BIN, poll
from tests.netns.hosts import Net, RouterProc, netns_hosts

FAST = ("--heartbeat-interval", "0.5")


def secret(path: Path, text: str) -> str:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


def reload(r: RouterProc, *env_lines: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = r.host.workdir / "mesh.env"
    env.write_text("".join(f"{line}\n" for line in env_lines))
    out = subprocess.run(
        [str(BIN / "weave-node"), "reload", "--env-file", str(env), "--socket", str(r.socket)],
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    assert out.returncode == 0 or not check, out.stderr
    return out


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    with netns_hosts(3, tmp_path) as net:
        yield net


def test_peers_and_passwords_change_without_a_restart(net: Net, tmp_path: Path) -> None:
    one, two = secret(tmp_path / "one", "password-one"), secret(tmp_path / "two", "password-two")
    h1, h2, h3 = (h.address for h in net.hosts)
    # h1 knows h2 only; h3 knows nobody: they meet when h1's list grows.
    r1 = net.start_router(1, *FAST, "--password-file", one, h2)
    r2 = net.start_router(2, *FAST, "--password-file", one, h1)
    r3 = net.start_router(3, *FAST, "--password-file", one)
    poll(lambda: r1.established() == {"h2"}, timeout=20, what="h1-h2")
    assert r3.established() == set()
    pids = [r.proc.pid for r in (r1, r2, r3)]

    out = reload(r1, f"WEAVE_PEERS={h2} {h3}", f"WEAVE_PASSWORD_FILE={one}")
    assert f"peers added: {h3}:6783" in out.stdout
    poll(lambda: r1.established() == {"h2", "h3"}, timeout=20, what="h1 dials h3 at once")
    assert f"peer list changed: added {h3}:6783; no longer configured none" in r1.log_text()

    # Rotation step 1 on h1 and h3 only: they use the new password between them, the old one with h2.
    for r in (r1, r3):
        reload(r, f"WEAVE_PEERS={h2} {h3}", f"WEAVE_PASSWORD_FILE={two}", f"WEAVE_PREVIOUS_PASSWORD_FILE={one}")
    poll(lambda: r2.established() == {"h1", "h3"}, timeout=20, what="h2 meets h3 through h1's topology")
    # Step 1 on h2, then step 2 everywhere: only the new password is left, and every connection works with it.
    reload(r2, f"WEAVE_PEERS={h1}", f"WEAVE_PASSWORD_FILE={two}", f"WEAVE_PREVIOUS_PASSWORD_FILE={one}")
    for r in (r1, r2, r3):
        reload(r, f"WEAVE_PEERS={h1} {h2} {h3}", f"WEAVE_PASSWORD_FILE={two}")
    for r, others in ((r1, {"h2", "h3"}), (r2, {"h1", "h3"}), (r3, {"h1", "h2"})):
        poll(lambda r=r, o=others: r.established() == o, timeout=20, what=f"{r.host.netns} meshed on the new password")  # type: ignore[misc]
        assert "password-one" not in r.log_text() and "password-two" not in r.log_text()
    assert [r.proc.pid for r in (r1, r2, r3)] == pids and all(r.proc.poll() is None for r in (r1, r2, r3))
    assert "password settings changed (encryption on, 1 previous password(s) accepted)" in r1.log_text()

    # A router that still has only the old password is refused by all: the old one is no longer accepted.
    r2.proc.kill()
    r2.proc.wait()
    net.routers.remove(r2)
    stale = net.start_router(2, *FAST, "--password-file", one, h1, h3)
    poll(lambda: "no password in common" in stale.log_text(), timeout=20, what="the old password refused")
    assert stale.established() == set()


def test_a_bad_reload_changes_nothing(net: Net, tmp_path: Path) -> None:
    one = secret(tmp_path / "one", "password-one")
    h1, h2, _ = (h.address for h in net.hosts)
    r1 = net.start_router(1, *FAST, "--password-file", one, h2)
    r2 = net.start_router(2, *FAST, "--password-file", one, h1)
    poll(lambda: r1.established() == {"h2"}, timeout=20, what="h1-h2")
    loose = tmp_path / "loose"
    loose.write_text("x\n")
    loose.chmod(0o644)
    empty = secret(tmp_path / "empty", "")
    for lines, message in [
        ((f"WEAVE_PEERS={h2}", f"WEAVE_PASSWORD_FILE={loose}"), "is readable by others"),
        ((f"WEAVE_PEERS={h2}", f"WEAVE_PASSWORD_FILE={empty}"), "is empty"),
        ((f"WEAVE_PEERS={h2}", f"WEAVE_PASSWORD_FILE={tmp_path / 'missing'}"), "No such file"),
        ((f"WEAVE_PEERS={h2}:99999", f"WEAVE_PASSWORD_FILE={one}"), "port"),
        ((f"WEAVE_PEERS={h2}",), "turning encryption off needs a restart"),
        (("this is not an env file",), "not KEY=VALUE"),
    ]:
        out = reload(r1, *lines, check=False)
        assert out.returncode != 0 and message in out.stderr, (lines, out.stderr)
    assert r1.established() == {"h2"} and r1.proc.poll() is None
    assert "password settings changed" not in r1.log_text() and "peer list changed" not in r1.log_text()
    # Over TCP (any local user reaches 127.0.0.1:6784): refused.
    code = (
        "import urllib.request, urllib.error\n"
        "try:\n    urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:6784/reload', data=b'{}'))\n"
        "except urllib.error.HTTPError as e:\n    print(e.code)"
    )
    assert r1.host.run("python3", "-c", code).stdout.strip() == "403"
    assert r2.proc.poll() is None


def info(r: RouterProc) -> dict[str, str]:
    return {c["nickname"]: c["info"] for c in r.status().get("connections", []) if c["state"] == "established"}


def test_encryption_is_switched_on_without_a_partition(net: Net, tmp_path: Path) -> None:
    """Step 1: a router restarted with a password and WEAVE_ACCEPT_UNENCRYPTED still talks to the one without
    (plaintext), and to another with the password (encrypted). Step 2: the setting goes (a reload) once every router
    has the password: plaintext is refused from then on."""
    one = secret(tmp_path / "one", "password-one")
    h1, h2, h3 = (h.address for h in net.hosts)
    accepting = ("--password-file", one, "--accept-unencrypted")
    r1 = net.start_router(1, *FAST, *accepting, h2, h3)
    r2 = net.start_router(2, *FAST, h1, h3)  # not switched yet: no password
    r3 = net.start_router(3, *FAST, *accepting, h1, h2)
    poll(
        lambda: info(r1) == {"h2": "unencrypted, v2", "h3": "encrypted, v2"}, timeout=20, what="h1: h2 plain, h3 sealed"
    )
    assert "encryption on, peers without a password accepted" in r1.log_text()
    # h2 gets the password too (a restart: the datapath changes with it), then the setting goes everywhere.
    r2.proc.kill()
    r2.proc.wait()
    net.routers.remove(r2)
    r2 = net.start_router(2, *FAST, *accepting, h1, h3)
    poll(lambda: info(r1) == {"h2": "encrypted, v2", "h3": "encrypted, v2"}, timeout=20, what="all encrypted")
    for r in (r1, r2, r3):
        reload(r, f"WEAVE_PEERS={h1} {h2} {h3}", f"WEAVE_PASSWORD_FILE={one}")
    assert info(r1) == {"h2": "encrypted, v2", "h3": "encrypted, v2"}  # nothing to re-establish
    r2.proc.kill()
    r2.proc.wait()
    net.routers.remove(r2)
    stranger = net.start_router(2, *FAST, h1)  # a router without a password is refused again
    poll(lambda: "peer has no password but we require one" in r1.log_text(), timeout=20, what="plaintext refused")
    assert stranger.established() == set()
