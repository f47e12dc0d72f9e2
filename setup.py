"""Our wheel carries the static `weave-net` CNI plugin: build_py compiles it (weave_node/cni/gobuild.py, loaded by
path) into weave_node/cni/bin/, and the wheel is tagged for the platform it was built for. An editable install
builds it on first use instead (gobuild.plugin()). Everything else is in pyproject.toml."""

from __future__ import annotations

import importlib.util
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _gobuild() -> Any:
    spec = importlib.util.spec_from_file_location("_weave_gobuild", HERE / "weave_node" / "cni" / "gobuild.py")
    assert spec is not None and spec.loader is not None  # noqa: S101 - our own file
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithPlugin(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            gobuild = _gobuild()
            gobuild.build(Path(self.build_lib) / "weave_node" / "cni" / "bin" / gobuild.binary_name())


class PlatformWheel(bdist_wheel):
    """Python code for any Python 3 (installed as pure), plus a native executable: py3-none-<platform>."""

    def get_tag(self) -> tuple[str, str, str]:
        return "py3", "none", sysconfig.get_platform().replace("-", "_").replace(".", "_")


setup(cmdclass={"build_py": BuildPyWithPlugin, "bdist_wheel": PlatformWheel})
