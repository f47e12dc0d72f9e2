"""Small helpers shared by tests: polling with a deadline (never a bare sleep), running our CLIs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def poll(fn: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = "condition") -> T:
    """Call fn until it returns something truthy; fail with `what` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value: {value!r})")
        time.sleep(interval)


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = False,
    input_text: str | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        input=input_text,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
