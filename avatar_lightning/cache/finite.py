"""The NaN policy of a capture cache: which float arrays may hold NaN, and a scan that finds rows that do.

Float arrays where NaN marks "no face in this frame" (with a ``.valid`` mask beside them) are listed in
:data:`MAY_HOLD_NAN`. Every other float array must be finite: a writer refuses NaN/Inf before the array is
listed, and readers that train or render on an array check it (``CaptureCache.require_finite``).
"""

from __future__ import annotations

import fnmatch
from typing import Any

import numpy as np

from avatar_lightning.cache.layout import landmark_array

MAY_HOLD_NAN: tuple[str, ...] = (landmark_array("*"),)
_FINITE_SCAN_BYTES = 64 << 20  # rows scanned per step: memory stays flat in the array's length


def must_be_finite(name: str, dtype: Any) -> bool:
    """Whether array ``name`` of ``dtype`` may hold only finite values (see :data:`MAY_HOLD_NAN`)."""
    kind = np.dtype(dtype).kind
    return kind in "fc" and not any(fnmatch.fnmatchcase(name, pattern) for pattern in MAY_HOLD_NAN)


def nonfinite_rows(data: np.ndarray) -> tuple[int, int | None]:
    """``(rows holding NaN or Inf, the first such row)`` of a (memory-mapped) array, scanned in slabs."""
    if data.dtype.kind not in "fc" or data.size == 0:
        return 0, None
    rows = data.reshape(1, -1) if data.ndim == 0 else data
    step = max(1, _FINITE_SCAN_BYTES // max(1, rows[0].nbytes))
    count, first = 0, None
    for start in range(0, len(rows), step):
        slab = np.asarray(rows[start : start + step])
        bad = ~np.isfinite(slab.reshape(len(slab), -1)).all(axis=1)
        if bad.any():
            count += int(bad.sum())
            first = start + int(np.argmax(bad)) if first is None else first
    return count, first

