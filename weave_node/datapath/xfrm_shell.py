"""Our xfrm states and policies in the kernel, through iproute2 (pyroute2 has no xfrm): `ip -batch -` with the
commands on stdin (keys never in a process list or a log line), `ip xfrm state list nokeys` to read back (keys
never read back at all). Everything here runs in the overlay's worker thread."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from weave_node.datapath import xfrm
from weave_node.datapath.xfrm import Sa, Xfrm, XfrmOp

TIMEOUT = 10.0
# The probe's SA: TEST-NET addresses, never a peer's, our reqid, the top SPI of our block (never allocated: sas.py
# draws below it... it may be drawn, but the probe's SA is gone again before any sync runs)
_PROBE = (("192.0.2.1", "192.0.2.2"), ("2001:db8::1", "2001:db8::2"))


class XfrmError(Exception):
    pass


def _ip(args: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise XfrmError(f"ip {' '.join(args[:3])}: {exc}") from exc


def observe() -> Xfrm:
    states = _ip(["xfrm", "state", "list", "nokeys"])
    policies = _ip(["xfrm", "policy", "list"])
    for proc in (states, policies):
        if proc.returncode != 0:
            raise XfrmError(f"ip xfrm: {proc.stderr.strip() or proc.returncode}")
    return Xfrm(
        xfrm.parse_states(states.stdout), xfrm.parse_policies(policies.stdout), xfrm.parse_other_spis(states.stdout)
    )


def apply(ops: Sequence[XfrmOp]) -> tuple[int, list[str]]:
    """(applied, errors), the errors naming the op (never its key). One batch; when it fails (iproute2 ends a batch
    at some errors, e.g. an unknown algorithm), each op on its own, an add that finds its object there and a
    delete that does not find it counting as done."""
    if not ops:
        return 0, []
    if _ip(["-batch", "-"], xfrm.batch(ops)).returncode == 0:
        return len(ops), []
    errors = []
    for op in ops:
        proc = _ip(["-batch", "-"], xfrm.batch([op]))
        said = proc.stderr.strip().splitlines()
        done = proc.returncode == 0 or any(_ALREADY[isinstance(op, xfrm.AddSa | xfrm.AddPolicy)] in line
                                           for line in said)  # fmt: skip
        if not done:
            why = next((line for line in said if not line.startswith("Command failed")), "failed")
            errors.append(f"{xfrm.describe(op)}: {why.removeprefix('Error: ').removeprefix('RTNETLINK answers: ')}")
    return len(ops) - len(errors), errors


_ALREADY = {True: "File exists", False: "No such"}


def probe() -> str | None:
    """None when this kernel takes an SA as ours are (ESP transport, rfc4106(gcm(aes)), ESN) for IPv4, and for
    IPv6 when the host has it; else why not. Tried for real: an SA between TEST-NET addresses, removed at once."""
    pairs = _PROBE if socket.has_ipv6 and Path("/proc/net/if_inet6").exists() else _PROBE[:1]
    try:
        for src, dst in pairs:
            sa = Sa(src, dst, xfrm.SPI_MAX, bytes(xfrm.KEY_BYTES))
            _, errors = apply([xfrm.AddSa(sa, 6784)])
            if errors:
                return errors[0].split(": ", 1)[-1]
            apply([xfrm.DeleteSa(sa)])
    except XfrmError as exc:  # no `ip`, or it hung
        return str(exc)
    return None
