"""Markers follow the directory a test lives in: tests/unit -> unit, tests/lab -> lab, ..."""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko.proxy
import pytest
from hypothesis import HealthCheck, settings
from testinfra.host import Host

# Property tests assert what the code does, not how fast: on two workers they share the CPU with lab tests, where
# Hypothesis' time-based checks (a slow draw, a deadline) fail for reasons that are not the code's.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


def _recv_by_poll(self: paramiko.proxy.ProxyCommand, size: int) -> bytes:
    """paramiko's ProxyCommand.recv waits with select(), which fails on a descriptor above 1024 ("filedescriptor out
    of range in select()"): a test worker that ran many modules can hold that many. The same with poll(), which has
    no such limit (inventory/lab.py does the same for pyinfra). A timeout is re-raised as paramiko expects (its
    transport polls with short timeouts); at end of file, what was read (b"": closed)."""
    buffer = b""
    start = time.time()
    poller = select.poll()
    poller.register(self.process.stdout, select.POLLIN | select.POLLHUP)
    try:
        while len(buffer) < size:
            wait = None
            if self.timeout is not None:
                wait = self.timeout - (time.time() - start)
                if wait <= 0:
                    raise TimeoutError()
            if poller.poll(None if wait is None else wait * 1000):
                chunk = os.read(self.process.stdout.fileno(), size - len(buffer))
                if not chunk:
                    return buffer
                buffer += chunk
        return buffer
    except TimeoutError:
        if buffer:
            return buffer
        raise
    except OSError as exc:
        raise paramiko.proxy.ProxyCommandFailure(" ".join(self.cmd), exc.strerror) from exc


paramiko.proxy.ProxyCommand.recv = _recv_by_poll  # type: ignore[method-assign]

MARK_BY_DIR = {
    "unit": "unit",
    "sim": "sim",
    "netns": "netns",
    "lab": "lab",
    "vm": "vm",
    "deploy": "unit",
    "e2e": "lab",
    "cni": "netns",
}
ROOT_ONLY = {"netns", "lab", "vm"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        rel = Path(str(item.fspath)).relative_to(tests_dir)
        mark = MARK_BY_DIR.get(rel.parts[0]) if len(rel.parts) > 1 else None
        if mark:
            item.add_marker(getattr(pytest.mark, mark))
        if mark in ROOT_ONLY and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason=f"{mark} tests need root"))


@pytest.fixture(scope="module", autouse=True)
def close_ssh_sessions() -> Iterator[None]:
    """testinfra caches a host (its paramiko client, a ProxyCommand with its pipes) for the life of the process.
    Closed and forgotten after each module: over a worker's modules the descriptors otherwise pile up past 1024,
    where paramiko's select() on a ProxyCommand fails ("filedescriptor out of range in select()")."""
    yield
    for host in list(Host._host_cache.values()):
        backend = host.backend
        client = backend.__dict__.get("client")  # (a functools.cached_property: only if it was made)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
    Host._host_cache.clear()
