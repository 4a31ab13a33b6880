"""Peak memory of this process and its children (forked chains), sampled.

`ru_maxrss` alone misses forked chains running at once and counts shared pages
twice; summing each process's proportional set size (PSS, Linux `smaps_rollup`)
every quarter second gives the memory the whole fit held at its peak.

It is not free: the kernel walks every page table for `smaps_rollup`, about 60 ms
of CPU per poll of a fit's process tree (measured beside a DDM fit), so a poller
takes about a quarter of one core. Time fits without it (`ddm_hierarchical.py`
polls only with `--memory`); `scaling.py` keeps it, the same cost at every size.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mib(root: int | None = None) -> float:
    """PSS of a process and all its descendants, MiB."""
    pending, total = [root or os.getpid()], 0
    while pending:
        pid = pending.pop()
        total += _pss_kib(pid)
        pending += _children(pid)
    return total / 1024


class PeakMemory:
    """`with PeakMemory() as peak: ...` then `peak.mib`: the largest sampled PSS
    of the process tree while the block ran."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.mib = interval, 0.0
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.mib = max(self.mib, tree_pss_mib())

    def __enter__(self) -> PeakMemory:
        self.mib = tree_pss_mib()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.mib = max(self.mib, tree_pss_mib())
