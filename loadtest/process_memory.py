"""Peak resident memory of a process tree (an export, a server and its model stubs), sampled while it runs.

The sampled figure sums the RSS of every process in the tree at one moment (pages shared between processes count once
per process, so it errs high); a peak shorter than the sampling interval can be missed. `wait_with_rusage` gives the
kernel's exact high-water mark of one child process instead (its largest process, not the tree's sum).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from dataclasses import dataclass

import psutil


def tree_rss_bytes(pid: int, include_root: bool = True) -> int:
    """RSS of `pid` (unless `include_root` is False) and all its descendants, now; 0 once the tree is gone."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)] if include_root else root.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for process in members:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


class PeakRssSampler:
    """Samples `tree_rss_bytes(pid, include_root)` every `interval_s` on a thread while the block runs.

    Example:
        with PeakRssSampler(os.getpid(), include_root=False) as memory:
            ...  # start and use child processes
        print(memory.peak_bytes)
    """

    def __init__(self, pid: int, include_root: bool = True, interval_s: float = 0.1) -> None:
        self.pid, self.include_root, self.interval_s = pid, include_root, interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def _sample(self) -> None:
        self.peak_bytes = max(self.peak_bytes, tree_rss_bytes(self.pid, self.include_root))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakRssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass(frozen=True)
class ChildExit:
    returncode: int
    max_rss_bytes: int  # the kernel's high-water mark of the child (and of the descendants it waited for)


def wait_with_rusage(process: subprocess.Popen) -> ChildExit:
    """Waits for `process` with wait4, which also returns its resource usage (ru_maxrss, KiB on Linux)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildExit(process.returncode, usage.ru_maxrss * 1024)
