"""A real CNI runtime for tests and benchmarks: `cnidriver` (tests/cni/driver/main.go) on Debian's libcni 1.1.2.

ensure_driver() installs the Go toolchain, libcni sources and the reference plugins with apt-get when they are
missing and builds the driver once per version of main.go; Driver runs it (optionally inside a network
namespace, so that whatever the plugins create on the host side stays out of the root namespace).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DRIVER_SRC = Path(__file__).resolve().parent / "driver" / "main.go"
CACHE_ROOT = Path(os.environ.get("WEAVE_NODE_TEST_CACHE", "/var/cache/weave-node-tests"))
PACKAGES = ("golang-go", "golang-github-appc-cni-dev", "containernetworking-plugins")
DEBIAN_GOPATH = "/usr/share/gocode"
REFERENCE_PLUGINS = Path("/usr/lib/cni")


class CniError(Exception):
    """The driver failed. code/msg/details come from the plugin's (or libcni's) CNI error when there was one;
    otherwise code is None and msg is the driver's message. stderr is the driver's whole stderr."""

    def __init__(self, code: int | None, msg: str, stderr: str, details: str = "") -> None:
        text = f"{msg}: {details}" if details else msg
        super().__init__(f"CNI error {code}: {text}" if code is not None else text)
        self.code = code
        self.msg = msg
        self.stderr = stderr
        self.details = details

    @classmethod
    def from_stderr(cls, stderr: str, returncode: int) -> CniError:
        text = stderr.strip()
        with contextlib.suppress(ValueError):
            doc = json.loads(text)
            if isinstance(doc, dict) and isinstance(doc.get("code"), int):
                return cls(doc["code"], str(doc.get("msg", "")), stderr, str(doc.get("details", "")))
        return cls(None, text or f"cnidriver exited with status {returncode}", stderr)


def _missing_packages() -> list[str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *PACKAGES],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    installed = {line.split()[0] for line in out.stdout.splitlines() if line.endswith("install ok installed")}
    return [pkg for pkg in PACKAGES if pkg not in installed]


def _apt_install(packages: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *packages]):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _go() -> str:
    go = shutil.which("go") or "/usr/lib/go/bin/go"
    if not Path(go).exists():
        raise RuntimeError("go not found after installing golang-go")
    return go


def driver_path() -> Path:
    """Where the driver for the current main.go lives (built or not)."""
    digest = hashlib.sha256(DRIVER_SRC.read_bytes()).hexdigest()[:16]
    return CACHE_ROOT / f"cnidriver-{digest}" / "cnidriver"


def ensure_driver() -> Path:
    """Install what is missing (apt-get), build the driver once for this main.go and return its path.

    Safe from several processes: a lock file serialises apt-get and the build, and the binary is written to a
    temporary file and renamed into place.
    """
    binary = driver_path()
    if binary.exists() and not _missing_packages():
        return binary
    with _locked(CACHE_ROOT / ".lock"):
        missing = _missing_packages()
        if missing:
            _apt_install(missing)
        if binary.exists():
            return binary
        binary.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="gopath-", dir=CACHE_ROOT) as gopath:
            env = dict(
                os.environ,
                GO111MODULE="off",
                GOPATH=f"{DEBIAN_GOPATH}:{gopath}",
                GOCACHE=str(CACHE_ROOT / "gocache"),
                CGO_ENABLED="0",
                GOFLAGS="",
            )
            tmp = binary.parent / f".cnidriver.{os.getpid()}.tmp"
            out = subprocess.run(
                [_go(), "build", "-trimpath", "-o", str(tmp), str(DRIVER_SRC)],
                capture_output=True,
                text=True,
                env=env,
                cwd=DRIVER_SRC.parent,
                check=False,
                timeout=900,
            )
            if out.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise RuntimeError(f"building cnidriver failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
            os.replace(tmp, binary)
    return binary


@dataclass
class Driver:
    """Runs cnidriver with CNI_PATH and libcni's cache dir; inside `ip netns exec NETNS` when netns is set."""

    binary: Path
    cni_path: str
    cache_dir: Path
    netns: str | None = None
    timeout: float = 60.0
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. CNIDRIVER_PORTMAPS

    def run(self, command: str, conflist: Path, container_id: str, netns: str, ifname: str = "eth0") -> str:
        argv = [str(self.binary), command, str(conflist), container_id, netns, ifname]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        env = dict(os.environ, CNI_PATH=self.cni_path, CNIDRIVER_CACHE_DIR=str(self.cache_dir), **self.extra_env)
        out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=self.timeout)
        if out.returncode != 0:
            raise CniError.from_stderr(out.stderr, out.returncode)
        return out.stdout

    def add(self, conflist: Path, container_id: str, netns: str, ifname: str = "eth0") -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.run("add", conflist, container_id, netns, ifname))
        return doc

    def check(self, conflist: Path, container_id: str, netns: str, ifname: str = "eth0") -> None:
        self.run("check", conflist, container_id, netns, ifname)

    def delete(self, conflist: Path, container_id: str, netns: str, ifname: str = "eth0") -> None:
        self.run("del", conflist, container_id, netns, ifname)
