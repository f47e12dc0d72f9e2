"""The `weave-net` CNI plugin binary: built from its Go source (weave-net/main.go, the standard library only) into
one static executable, so it runs on nodes without Python and starts in about a millisecond.

Standard library only, and no weave_node import: setup.py loads this file by path to build the binary into our
wheel (every install path then carries it: the rollout's wheelhouse, the Ansible role, the DaemonSet's image), and
`weave-node install-cni-plugin` asks `plugin()` for it. A checkout (an editable install) has no packaged binary:
it is built on first use into a cache outside the repository, keyed by the source's hash. Building needs Go
(Debian: golang-go); hosts never build, they get the wheel's binary.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "weave-net" / "main.go"
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


class PluginUnavailable(RuntimeError):
    pass


def goarch(machine: str | None = None) -> str:
    machine = machine or platform.machine()
    return _GOARCH.get(machine, machine)


def binary_name(arch: str | None = None) -> str:
    """The name our wheel carries the binary under: weave_node/cni/bin/weave-net-linux-<goarch>."""
    return f"weave-net-linux-{arch or goarch()}"


def packaged() -> Path:
    return HERE / "bin" / binary_name()


def source_hash() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


def build(out: Path, arch: str | None = None, source: Path = SOURCE) -> Path:
    """`go build` of the plugin into `out`, atomically (a temp file renamed into place). Reproducible: the same
    source and Go give the same bytes (-trimpath, no build id), wherever the tree is."""
    go = shutil.which("go") or ("/usr/lib/go/bin/go" if Path("/usr/lib/go/bin/go").exists() else None)
    if go is None:
        raise PluginUnavailable(
            f"there is no prebuilt weave-net plugin for {goarch()} here, and building it needs Go "
            "(Debian: apt-get install golang-go)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "CGO_ENABLED": "0",  # static: no C library needed on the node
        "GO111MODULE": "off",  # the standard library only: no module download, no go.mod
        "GOOS": "linux",
        "GOARCH": arch or goarch(),
        "GOFLAGS": "",
    }
    if not env.get("GOCACHE") and not env.get("XDG_CACHE_HOME") and not env.get("HOME"):
        env["GOCACHE"] = str(Path(tempfile.gettempdir()) / "weave-node-go-build")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}-")
    os.close(fd)
    try:
        done = subprocess.run(
            [go, "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", tmp, source.name],
            cwd=source.parent,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise PluginUnavailable(f"building the weave-net plugin failed: {done.stderr.strip()[-2000:]}")
        os.chmod(tmp, 0o755)  # noqa: S103 - an executable everyone may run
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return out


def cache_dir() -> Path:
    """WEAVE_NODE_BUILD_CACHE, or /var/cache/weave-node for root, ~/.cache/weave-node else."""
    if os.environ.get("WEAVE_NODE_BUILD_CACHE"):
        return Path(os.environ["WEAVE_NODE_BUILD_CACHE"])
    return Path("/var/cache/weave-node") if os.geteuid() == 0 else Path.home() / ".cache" / "weave-node"


def plugin() -> Path:
    """The binary for this machine: our wheel's, or (a checkout) built once per source into the cache."""
    if packaged().is_file():
        return packaged()
    target = cache_dir() / f"{binary_name()}-{source_hash()}"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".weave-net.lock").open("w") as lock:  # parallel test workers build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        return target if target.is_file() else build(target)


if __name__ == "__main__":
    print(plugin())  # noqa: T201 - the binary's path, for scripts and benchmarks
