"""Where the datapath's kernel calls run: a pyroute2 IPRoute socket, or a command, in a network namespace.

Every function takes `netns` (a name under /run/netns or a path; None for our own namespace), so tests drive
hosts that are namespaces. pyroute2's sync API runs its own event loop: call these from a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import config as pyroute2_config
from pyroute2.netlink.exceptions import NetlinkError

# pyroute2 enters another namespace in a forked child that it ends with SIGTERM. Unless the child resets its
# signal handlers, that SIGTERM reaches the router's asyncio wakeup fd (inherited) and looks like a shutdown
# request: measured ~5% of namespace opens under load.
pyroute2_config.disable_mp_signal = True

RUN_TIMEOUT = 30.0
T = TypeVar("T")
_own = threading.local()  # per thread: this namespace's netlink socket (pyroute2's sockets are not thread-safe)


class DatapathError(Exception):
    """A kernel operation failed; the message says which and why."""


libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def made_in(netns: str, make: Callable[[], T]) -> T:
    """`make()` run with this thread in `netns` (a path, or a name under /run/netns), then back: a socket stays in
    the namespace it was created in. The thread never stays in a pod's namespace (it aborts the process first)."""
    path = netns if "/" in netns else f"/run/netns/{netns}"
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DatapathError(f"cannot open network namespace {netns}: {exc.strerror}") from exc
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(target)
        raise
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise DatapathError(f"cannot enter network namespace {netns}: {os.strerror(err)}")
        try:
            return make()
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:  # a thread left in a pod's namespace would be a disaster
                os.abort()
    finally:
        os.close(target)
        os.close(own)


def socket_in(netns: str) -> Any:
    """An IPRoute whose netlink socket lives in `netns`: 0.8 ms, against ~5 ms for pyroute2's own netns support,
    which forks a helper."""
    return made_in(netns, IPRoute)


@contextlib.contextmanager
def ipr_in(netns: str | None) -> Iterator[Any]:
    """A netlink socket in `netns`. Our own namespace's is kept per thread (every pod ADD and DEL would open and
    close one: ~0.4 ms of the ADD); one that failed is closed and replaced."""
    if not netns:
        ipr = getattr(_own, "ipr", None)
        if ipr is None:
            try:
                ipr = _own.ipr = IPRoute()
            except (OSError, NetlinkError) as exc:
                raise DatapathError(f"cannot open a netlink socket: {exc}") from exc
        try:
            yield ipr
        except OSError:
            _own.ipr = None
            ipr.close()
            raise
        return
    try:
        ipr = socket_in(netns)
    except (OSError, NetlinkError) as exc:
        raise DatapathError(f"cannot open network namespace {netns}: {exc}") from exc
    try:
        yield ipr
    finally:
        ipr.close()


def ns_argv(netns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def run(netns: str | None, argv: list[str], stdin: str | None = None) -> str:
    try:
        out = subprocess.run(
            ns_argv(netns, argv), input=stdin, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatapathError(f"{argv[0]}: {exc}") from exc
    if out.returncode != 0:
        raise DatapathError(f"{' '.join(argv)} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise DatapathError(f"link {name} does not exist")
    return int(found[0])
