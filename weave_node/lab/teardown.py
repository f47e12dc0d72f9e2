"""Removing a lab: everything of it that exists on this machine (namespaces, cgroups, files), found by name, so
any partial state (a failed `up`, a crash, a reboot) can be removed."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

from weave_node.lab import system
from weave_node.lab.paths import LabPaths
from weave_node.lab.system import LabError


def leftovers(name: str) -> list[str]:
    """Everything of lab `name` that exists on this machine (namespaces, cgroups, files)."""
    found = [f"netns {ns}" for ns in system.netns_list() if ns.startswith(f"wnl-{name}-")]
    found += [f"cgroup {cg}" for cg in system.lab_cgroups(name, controllers=True) if cg.exists()]
    paths = LabPaths.of(name)
    if paths.root.exists():
        found.append(f"dir {paths.root}")
    return found


def teardown(name: str) -> None:
    """Stop every host, then delete cgroups, namespaces and files. Safe to call on any partial state."""
    _close_ssh_masters(LabPaths.of(name).root / "ssh-control")
    system.stop_pods(name)  # containers first: a host halting with pods waits ~90 s for them
    cgroups = system.lab_cgroups(name, controllers=True)
    system.kill_tree(cgroups, grace=8.0)
    for cg in cgroups:
        system.remove_cgroup_tree(cg)
        with contextlib.suppress(OSError):  # the shared parent goes when the last lab goes
            cg.parent.rmdir()
    namespaces = [ns for ns in system.netns_list() if ns.startswith(f"wnl-{name}-")]
    for ns in sorted(namespaces, key=lambda n: n.endswith("-u")):  # hosts first, the underlay last
        system.netns_delete(ns)
    _remove_nspawn_runtime_dirs(name)
    paths = LabPaths.of(name)
    if paths.root.exists():
        shutil.rmtree(paths.root)
    still = leftovers(name)
    if still:
        raise LabError(f"could not remove: {', '.join(still)}")


def _close_ssh_masters(directory: Path) -> None:
    """Ansible keeps an SSH connection per host open (ControlPersist) in the lab's own control directory
    (inventory/lab.py): close them, so no master (and its ProxyCommand in the underlay) outlives the lab."""
    if not directory.is_dir():
        return
    for socket_path in directory.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "lab"],
            capture_output=True,
            timeout=10,
            check=False,
        )


def _remove_nspawn_runtime_dirs(name: str) -> None:
    """nspawn leaves /run/systemd/nspawn/propagate/<machine> when /run is not a tmpfs (as on these VMs)."""
    base = Path("/run/systemd/nspawn")
    for sub in ("propagate", "unix-export"):
        d = base / sub
        if d.is_dir():
            for entry in d.iterdir():
                if entry.name.startswith(f"wnl-{name}-") and not os.path.ismount(entry):
                    shutil.rmtree(entry, ignore_errors=True)
