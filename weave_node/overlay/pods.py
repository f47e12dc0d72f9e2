"""Pod plumbing for the CNI plugin's verbs, on threads of its own: an ADD never waits behind a datapath sync
(per-attachment order is kept by the caller's locks; different pods are independent in the kernel)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from weave_node.datapath.model import Pod
from weave_node.overlay.kernel import Kernel


class PodPlumbing:
    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pods")

    async def attach(self, pod: Pod) -> dict[str, str]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.kernel.attach_pod, pod)

    async def detach(self, pod: Pod) -> bool:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.kernel.detach_pod, pod)

    async def state(self, pod: Pod) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.kernel.pod_state, pod)

    async def close(self) -> None:
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)
