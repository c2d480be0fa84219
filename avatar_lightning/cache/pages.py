"""Memory-map pages: streaming through a long capture keeps the process's resident memory flat."""

from __future__ import annotations

import mmap

import numpy as np


def release_pages(array: np.ndarray) -> None:
    """Drop the pages of the memory map behind ``array`` from this process's resident set (in-memory arrays: no-op).

    Why: a memory map's pages count in RSS for as long as the mapping lives, so streaming through a long capture
    (ingest writing it, features or animate reading it) grew RSS by the file's size. Written pages are flushed
    first; the data stay on disk and in the page cache, and the next access faults them back in.
    """
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, mmap.mmap) and not base.closed:
        base.flush()  # no-op for a read-only map
        base.madvise(mmap.MADV_DONTNEED)


class PageBudget:
    """Calls :func:`release_pages` on the arrays it was shown once ``budget`` bytes went through them."""

    def __init__(self, budget: int = 256 * 2**20) -> None:
        self.budget, self.spent = budget, 0
        self.arrays: dict[int, np.ndarray] = {}

    def charge(self, array: np.ndarray, nbytes: int) -> None:
        self.arrays[id(array)] = array
        self.spent += nbytes
        if self.spent >= self.budget:
            for mapped in self.arrays.values():
                release_pages(mapped)
            self.arrays.clear()
            self.spent = 0

