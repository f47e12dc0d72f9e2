"""The lab's contact with the machine: commands, network namespaces, cgroups and processes.

Everything here acts only on things the lab named itself (namespaces `wnl-<lab>-*`, cgroups
`weave-node-lab/<lab>/*`) and on processes inside those cgroups, which the lab started.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from weave_node.core.errors import WeaveError

NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "weave-node-lab"
CLONE_NEWNET = 0x40000000


class LabError(WeaveError):
    pass


def run(cmd: Sequence[str], *, input_text: str | None = None, check: bool = True) -> str:
    """Run a command; on failure raise LabError with the command and its first error line."""
    proc = subprocess.run(list(cmd), input=input_text, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"`{' '.join(cmd)}` failed: {err[-1] if err else f'exit {proc.returncode}'}")
    return proc.stdout


def stream(
    cmd: Sequence[str],
    on_line: Callable[[str], None],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    keep: int | None = None,
) -> tuple[int, list[str]]:
    """Run a long command (a build), passing each non-empty output line (stdout and stderr) to on_line as it
    comes; returns (exit code, its last `keep` lines, or all of them) for the caller's error message."""
    tail: list[str] = []
    with subprocess.Popen(
        list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        for raw in proc.stdout or ():
            line = raw.rstrip()
            tail.append(line)
            if keep is not None and len(tail) > keep:
                del tail[0]
            if line:
                on_line(line)
        code = proc.wait()
    return code, tail


def require_tools(tools: dict[str, str]) -> None:
    """tools: command -> the Debian package that provides it. One line naming everything missing."""
    missing = [f"{cmd} (apt-get install {pkg})" for cmd, pkg in tools.items() if shutil.which(cmd) is None]
    if missing:
        raise LabError("missing dependency: " + ", ".join(missing))


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, systemd-nspawn): run it as root")


# ---- network namespaces -------------------------------------------------------------------------------


def netns_list() -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir())


def netns_add(name: str) -> None:
    run(["ip", "netns", "add", name])


def netns_delete(name: str) -> None:
    if (NETNS_DIR / name).exists():
        run(["ip", "netns", "delete", name])


def ip(netns: str, *args: str) -> str:
    return run(["ip", "-n", netns, *args])


def ip_batch(netns: str | None, commands: Iterable[str]) -> None:
    """Several `ip` commands in one process (one fork instead of dozens); netns None = this namespace."""
    where = ["-n", netns] if netns else []
    run(["ip", *where, "-batch", "-"], input_text="\n".join(commands) + "\n")


_libc = ctypes.CDLL(None, use_errno=True)


def socket_in_netns(netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket created inside `netns` (a socket keeps the namespace it was born in).

    setns() changes only the calling thread's namespace, so it runs in a short-lived thread of its own.
    """
    result: list[socket.socket | BaseException] = []

    def worker() -> None:
        try:
            fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(socket.socket(family, kind))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=worker, name=f"netns-{netns}")
    thread.start()
    thread.join()
    out = result[0]
    if isinstance(out, BaseException):
        raise out
    return out


def ssh_banner(netns: str, address: str, port: int = 22, timeout: float = 0.5) -> str | None:
    """The SSH banner from address:port inside netns, or None if sshd is not answering yet."""
    sock = socket_in_netns(netns, socket.AF_INET6 if ":" in address else socket.AF_INET)
    try:
        sock.settimeout(timeout)
        sock.connect((address, port))
        data = sock.recv(256)
    except OSError:
        return None
    finally:
        sock.close()
    text = data.decode(errors="replace")
    return text.strip() if text.startswith("SSH-") else None


# ---- cgroups ------------------------------------------------------------------------------------------


def cgroup_hierarchies() -> list[Path]:
    """Where a process must be placed so systemd-nspawn --keep-unit gets a cgroup of its own.

    Unified (pure cgroup v2): one tree. Hybrid (as on these VMs): the named `systemd` v1 tree and the v2
    tree at `unified`. Legacy v1: the `systemd` tree. The first entry is used to list processes.
    """
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    found = [CGROUP_ROOT / "systemd", CGROUP_ROOT / "unified"]
    present = [p for p in found if (p / "cgroup.procs").exists()]
    if not present:
        raise LabError("no usable cgroup hierarchy under /sys/fs/cgroup (need cgroup v2 or a name=systemd tree)")
    return present


def v1_controllers() -> list[Path]:
    """The v1 controller hierarchies (cpu, memory, cpuset...) of a hybrid or legacy machine; none on unified."""
    if (CGROUP_ROOT / "cgroup.controllers").exists() or not CGROUP_ROOT.is_dir():
        return []
    return sorted(
        p
        for p in CGROUP_ROOT.iterdir()
        if p.name not in ("systemd", "unified") and not p.is_symlink() and (p / "cgroup.procs").exists()
    )


def lab_cgroups(lab: str, host: str | None = None, controllers: bool = False) -> list[Path]:
    """The lab's (or one host's) cgroups: in the hierarchies nspawn needs, and with `controllers` also in every
    v1 controller (a Kubernetes host's pods get their cgroups there, under the host's own)."""
    parts = [CGROUP_PARENT, lab] + ([host] if host else [])
    hierarchies = cgroup_hierarchies() + (v1_controllers() if controllers else [])
    return [h.joinpath(*parts) for h in hierarchies]


def make_cgroups(paths: Iterable[Path]) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        if (path / "cpuset.cpus").exists():
            _inherit_cpuset(path)


def _inherit_cpuset(path: Path) -> None:
    """A new v1 cpuset cgroup starts with no CPUs and no memory nodes (no task can join it): copy its parents'."""
    chain = []
    while (path / "cpuset.cpus").exists() and (path.parent / "cpuset.cpus").exists():
        chain.append(path)
        path = path.parent
    for cg in reversed(chain):
        for name in ("cpuset.cpus", "cpuset.mems"):
            if not (cg / name).read_text().strip():
                (cg / name).write_text((cg.parent / name).read_text())


def enter_cgroups(paths: Sequence[Path]) -> None:
    """Move the calling process into every given cgroup (used between fork and exec)."""
    for path in paths:
        (path / "cgroup.procs").write_text("0")


def cgroup_pids(path: Path) -> list[int]:
    """Every process in the cgroup subtree at path."""
    pids: list[int] = []
    if not path.is_dir():
        return pids
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                text = (Path(dirpath) / "cgroup.procs").read_text()
                pids.extend(int(x) for x in text.split())
    return pids


def remove_cgroup_tree(path: Path) -> None:
    """rmdir a cgroup subtree bottom-up (cgroupfs directories can only be removed with rmdir)."""
    if not path.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda t: -len(t[0])):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(dirpath)


# ---- processes ----------------------------------------------------------------------------------------


def comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return comm(pid) is not None  # a zombie has no comm to read after reaping races; good enough


def signal_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_empty(paths: Sequence[Path], deadline: float) -> bool:
    """Poll until no process is left in any of the cgroup subtrees, or the deadline passes."""
    while True:
        if not any(cgroup_pids(p) for p in paths):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def ns_pid_one(candidates: Iterable[int]) -> int | None:
    """Which of these processes is PID 1 of its own PID namespace (a booted host's systemd)."""
    for pid in candidates:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                if len(ids) > 1 and ids[-1] == "1":
                    return pid
    return None


def pss_kib(pids: Iterable[int]) -> int:
    """Proportional set size of these processes, in KiB (shared pages split fairly between sharers)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


def kill_tree(paths: Sequence[Path], grace: float) -> None:
    """SIGTERM the systemd-nspawn supervisors under these cgroups, then SIGKILL whatever is left.

    nspawn turns SIGTERM into a halt request for the host's systemd, which a host still early in its boot has
    no handler for yet (PID 1 ignores signals it does not handle): so the request is repeated until the host
    is gone or the grace period ends.
    """
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        pids = {pid for p in paths for pid in cgroup_pids(p)}
        if not pids:
            return
        supervisors = [pid for pid in pids if comm(pid) == "systemd-nspawn"]
        signal_pids(supervisors or pids, signal.SIGTERM)
        wait_empty(paths, min(deadline, time.monotonic() + 0.5))
    signal_pids({pid for p in paths for pid in cgroup_pids(p)}, signal.SIGKILL)
    wait_empty(paths, time.monotonic() + 5.0)


def spawn_in_cgroups(cmd: Sequence[str], log_path: Path, cgroups: Sequence[Path]) -> None:
    """Start a long-running command (a host's nspawn or QEMU) in a session and cgroups of its own, its output to
    `log_path`; not waited for (the lab finds it again through its cgroups)."""
    with open(log_path, "wb") as log:
        subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: enter_cgroups(cgroups),  # noqa: PLW1509 - single-threaded here
        )


def stop_pods(lab: str) -> None:
    """Before a Kubernetes lab's hosts halt: SIGKILL every process in the pods' cgroups (a host waits ~90 s for
    containers otherwise). Only processes inside this lab's own cgroup trees are touched."""
    trees: list[Path] = []
    for lab_cg in lab_cgroups(lab, controllers=True):
        if lab_cg.is_dir():
            trees += [h / "kubepods" for h in sorted(lab_cg.iterdir()) if (h / "kubepods").is_dir()]
    signal_pids({pid for tree in trees for pid in cgroup_pids(tree)}, signal.SIGKILL)
    wait_empty(trees, time.monotonic() + 5.0)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a temp file beside path, fsync, then rename: readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_WANTED = 8192


def raise_inotify_instances(path: Path = INOTIFY_INSTANCES, wanted: int = INOTIFY_WANTED) -> str | None:
    """systemd in every lab host takes inotify instances of this machine's root user (the limit is per user, not per
    namespace): with Debian's default of 128, about a dozen hosts up at once left the next one's systemd without
    ("Failed to create inotify object: Too many open files") and its sshd never started. Raised to `wanted`
    (never lowered; what kind's users are told to do); what was done, for the progress output, or None."""
    try:
        current = int(path.read_text())
    except (OSError, ValueError):
        return None
    if current >= wanted:
        return None
    try:
        path.write_text(f"{wanted}\n")
    except OSError as exc:
        return f"fs.inotify.max_user_instances is {current} and could not be raised ({exc.strerror}): few labs fit"
    return f"raised fs.inotify.max_user_instances from {current} to {wanted} (systemd in each lab host needs some)"
