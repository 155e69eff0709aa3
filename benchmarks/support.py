"""What several benchmarks share: temporary folders for their runs, and the peak resident set of a block of work."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading


def scratch_folder(prefix: str) -> str:
    """A new temporary folder, removed (with what was written into it) when the process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def rss_mb() -> float:
    """This process's resident set, MB (Linux's /proc/self/statm)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """The highest resident set seen while the block runs, sampled every 2 ms (ru_maxrss would also count
    loading the data set before the run); ``peak - base`` is the block's growth."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = rss_mb()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, rss_mb())
