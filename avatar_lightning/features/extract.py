"""Feature extraction over a capture as Lightning ``predict``: spreads over devices and nodes unchanged.

:class:`FeatureExtraction` wraps an extractor; its ``predict_step`` takes a batch of frames from
:class:`datamodules.FramesDataModule` and returns ``frame_index (B,)`` plus, per output, ``<output> (B, D)`` and
``<output>.valid (B,)``; :class:`callbacks.CacheWriter` writes them into ``features/<output>[.valid]``.

What needs the whole sequence runs once every frame is in, on the complete (memory-mapped) arrays, just before
they are committed (:func:`fill_and_normalise`, the writer's ``finalize``):

- frames without a face (``valid`` False) get values linearly interpolated from the nearest valid frames of
  the same sequence (held constant before the first and after the last; zero in a sequence with no face),
- optionally (``relative``) the mean over valid frames is subtracted, per sequence or over the whole capture
  (the whole capture is one person, so this removes the person's mean face shape; per sequence also removes
  a sequence's mean expression); or, causally (``running``), each frame's own estimate of the person's
  neutral: the mean of the sequence's valid frames up to that frame, but never of fewer than its first
  ``warmup`` valid frames (:func:`subtract_running_mean`; ``running_zscore`` also divides by the running
  spread, so a person who moves less or more than the actor is mapped onto one range). ``sequence`` needs the
  whole video before the first frame; ``running`` looks at most ``warmup`` frames ahead (2 s), so a live driver
  can use it; ``warmup`` takes the neutral from the first 2 s only and holds it (a calibration).

Memory stays flat in the capture's length: both passes work in chunks of rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from avatar_lightning.cache.layout import feature_array, valid_array
from avatar_lightning.errors import CacheError
from avatar_lightning.features.base import FeatureExtractor, build_extractor

Relative = Literal["none", "sequence", "capture", "running", "running_zscore", "warmup"]
RELATIVE_CHOICES: tuple[str, ...] = ("none", "sequence", "capture", "running", "running_zscore", "warmup")
CHUNK_ROWS = 4096
RUNNING_WARMUP_SECONDS = 2.0  # ``running``: the neutral estimate never rests on fewer valid frames than this


class FeatureExtraction(pl.LightningModule):
    """Runs a registered extractor over every frame; ``predict`` only.

    Frames must arrive in order within a process (``FramesDataModule`` guarantees it, also under DDP where
    each rank gets a contiguous block). The extractor's temporal state is reset at every sequence start and
    wherever frame indices jump (a rank's first frame, a gap).

    Args:
        extractor: registered name (``mediapipe``, ``deca``, ...).
        options: keyword arguments of the extractor (e.g. ``checkpoint`` for DECA).
        sequence_starts: first frame of every sequence in the cache.
    """

    def __init__(self, extractor: str, options: Mapping[str, Any] | None = None,
                 sequence_starts: Sequence[int] = ()) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.extractor: FeatureExtractor = build_extractor(extractor, **dict(options or {}))
        self.sequence_starts = {int(s) for s in sequence_starts}
        self._next_index: int | None = None

    def _runs(self, index: np.ndarray) -> list[tuple[int, int, bool]]:
        """Split a batch into runs of consecutive frames: (start, stop, reset before it)."""
        runs, start = [], 0
        for i in range(1, len(index) + 1):
            if i == len(index) or index[i] != index[i - 1] + 1 or int(index[i]) in self.sequence_starts:
                first = int(index[start])
                runs.append((start, i, first in self.sequence_starts or first != self._next_index))
                self._next_index = int(index[i - 1]) + 1
                start = i
        return runs

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        frames = batch["frames"][:, 0]  # (B, H, W, 3) uint8: windows of one frame
        index = batch["frame_index"][:, 0]  # (B,) int64
        parts: list[dict[str, Tensor]] = []
        for start, stop, reset in self._runs(index.cpu().numpy()):
            if reset:
                self.extractor.reset()
            out = self.extractor(frames[start:stop])
            parts.append({**out.values, **{f"{name}.valid": out.valid for name in out.values}})
        result = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        return {"frame_index": index, **result}

    def on_predict_start(self) -> None:
        self._next_index = None

    def configure_optimizers(self) -> None:  # predict only
        return None


def _runs_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``[start, stop)`` runs where ``mask`` is True."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def interpolate_invalid(values: np.ndarray, valid: np.ndarray, first: int, last: int) -> None:
    """Fill invalid rows ``first..last`` of ``values (N, D)`` in place from the nearest valid rows of that span."""
    span = valid[first : last + 1]
    if span.all():
        return
    if not span.any():
        values[first : last + 1] = 0
        return
    for start, stop in _runs_of(~span):
        a, b = first + start - 1, first + stop  # valid neighbours (may lie outside the span)
        if start == 0:
            values[first + start : first + stop] = values[b]
        elif first + stop > last:
            values[first + start : first + stop] = values[a]
        else:
            t = (np.arange(1, stop - start + 1, dtype=np.float64) / (b - a))[:, None]
            values[first + start : first + stop] = ((1 - t) * values[a] + t * values[b]).astype(values.dtype)


def _mean_of_valid(values: np.ndarray, valid: np.ndarray, first: int, last: int) -> np.ndarray | None:
    total, count = np.zeros(values.shape[1], dtype=np.float64), 0
    for start in range(first, last + 1, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, last + 1)
        mask = valid[start:stop]
        total += values[start:stop][mask].sum(0, dtype=np.float64)
        count += int(mask.sum())
    return total / count if count else None


def subtract_running_mean(values: np.ndarray, valid: np.ndarray, first: int, last: int, warmup: int) -> None:
    """Subtract from rows ``first..last`` (in place) the mean of the valid rows up to each, warm-up included.

    Row t gets the mean of the valid rows in ``first..t``, or, while fewer than ``warmup`` valid rows have come,
    the mean of the first ``warmup`` valid rows (all of them in a shorter span). Rows interpolated into invalid
    frames are never counted. Memory stays flat: rows are read in chunks, each chunk's sums taken before it is
    changed.
    """
    normalise_running(values, valid, first, last, warmup, scale=False)


def normalise_running(values: np.ndarray, valid: np.ndarray, first: int, last: int, warmup: int,
                      scale: bool = True) -> None:
    """:func:`subtract_running_mean`, and with ``scale`` also divide by the running standard deviation per column.

    Why scale: another person's (or a rendered face's) features can move over a range several times smaller or
    larger than the actor's; dividing by each person's own spread maps both onto one range. A column's spread is
    floored at ``STD_FLOOR`` times the median spread of all columns, so a column that barely moves (noise) is not
    blown up to unit variance.
    """
    warmup = max(int(warmup), 1)
    index = np.flatnonzero(valid[first : last + 1]) + first
    if not len(index):
        return
    head = values[index[:warmup]].astype(np.float64)
    warm_mean, warm_std = head.mean(0), _floored(head.std(0))
    total = np.zeros(values.shape[1], dtype=np.float64)
    total_sq = np.zeros(values.shape[1], dtype=np.float64)
    count = 0
    for start in range(first, last + 1, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, last + 1)
        rows = values[start:stop].astype(np.float64)
        mask = valid[start:stop].astype(bool)
        counts = count + np.cumsum(mask)
        sums = total + np.cumsum(rows * mask[:, None], axis=0)
        warm = (counts < warmup)[:, None]
        n = np.maximum(counts, 1)[:, None]
        means = np.where(warm, warm_mean, sums / n)
        if scale:
            sums_sq = total_sq + np.cumsum(rows**2 * mask[:, None], axis=0)
            spread = _floored(np.sqrt(np.maximum(sums_sq / n - (sums / n) ** 2, 0.0)))
            rows = (rows - means) / np.where(warm, warm_std, spread)
            total_sq = sums_sq[-1]
        else:
            rows = rows - means
        total, count = sums[-1], int(counts[-1])
        values[start:stop] = rows.astype(values.dtype)


def subtract_warmup_mean(values: np.ndarray, valid: np.ndarray, first: int, last: int, warmup: int) -> None:
    """Subtract from rows ``first..last`` (in place) the mean of the span's first ``warmup`` valid rows.

    A calibration: the person's neutral is taken from the first seconds (a live user looks neutral for them)
    and then held, so an expression held later is never averaged into it (as it is by ``running``).
    """
    index = np.flatnonzero(valid[first : last + 1]) + first
    if not len(index):
        return
    mean = values[index[: max(int(warmup), 1)]].astype(np.float64).mean(0)
    for start in range(first, last + 1, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, last + 1)
        values[start:stop] = (values[start:stop].astype(np.float64) - mean).astype(values.dtype)


STD_FLOOR = 0.05


def _floored(std: np.ndarray) -> np.ndarray:
    """Per-column spreads ``(..., D)`` floored at STD_FLOOR x their median over the columns (and above zero)."""
    floor = STD_FLOOR * np.median(std, axis=-1, keepdims=True)
    return np.maximum(std, np.maximum(floor, 1e-12))


def fill_and_normalise(arrays: Mapping[str, np.ndarray], outputs: Sequence[str],
                       spans: Sequence[tuple[int, int]], relative: str = "none", warmup: int = 50) -> None:
    """The post-pass over complete arrays (in place): interpolate faceless frames, optionally subtract the mean.

    Args:
        arrays: cache array name -> writable array, holding ``features/<output>`` and ``features/<output>.valid``.
        outputs: the extractor's output names.
        spans: (first, last) frames of every sequence; interpolation never crosses them.
        relative: ``none``, ``sequence`` (subtract each sequence's mean), ``capture`` (one mean over all) or
            ``running`` (each frame's causal estimate, per sequence, :func:`subtract_running_mean`) or
            ``running_zscore`` (also divided by the running spread, :func:`normalise_running`) or ``warmup``
            (the mean of each sequence's first ``warmup`` valid frames, then held, :func:`subtract_warmup_mean`).
        warmup: ``running``: valid frames the first estimate averages (the features stage passes 2 s of frames).
    """
    if relative not in RELATIVE_CHOICES:
        raise ValueError(f"relative must be one of {RELATIVE_CHOICES}, got {relative!r}")
    for output in outputs:
        values, valid = arrays[feature_array(output)], np.asarray(arrays[valid_array(output)], dtype=bool)
        if not valid.any():  # raised before the commit: a previous features/<output> stays as it was
            raise CacheError(f"{feature_array(output)}: no face was found in any of the {len(valid)} frames, so there "
                             "is nothing to learn from or drive with; nothing was written. Check that the video shows "
                             "a face (or pick another camera with --camera)")
        groups: list[list[tuple[int, int]]] = []
        if relative == "sequence":
            groups = [[span] for span in spans]
        elif relative == "capture":
            groups = [list(spans)]
        means = []
        for group in groups:  # means of the raw valid rows, before interpolation adds any
            parts = [(m, int(valid[a : b + 1].sum())) for a, b in group
                     if (m := _mean_of_valid(values, valid, a, b)) is not None]
            count = sum(n for _, n in parts)
            means.append(sum(m * n for m, n in parts) / count if count else None)
        for first, last in spans:
            interpolate_invalid(values, valid, first, last)
            if relative == "warmup":
                subtract_warmup_mean(values, valid, first, last, warmup)
            elif relative in ("running", "running_zscore"):
                normalise_running(values, valid, first, last, warmup, scale=relative == "running_zscore")
        for group, mean in zip(groups, means, strict=True):
            if mean is None:
                continue
            for a, b in group:
                for start in range(a, b + 1, CHUNK_ROWS):
                    stop = min(start + CHUNK_ROWS, b + 1)
                    values[start:stop] -= mean.astype(values.dtype)


def covering_spans(sequences: Sequence[tuple[int, int]], num_frames: int) -> list[tuple[int, int]]:
    """Sequence spans plus spans for frames no sequence covers, in frame order (every frame in exactly one)."""
    spans, cursor = [], 0
    for first, last in sorted(sequences):
        if first > cursor:
            spans.append((cursor, first - 1))
        spans.append((first, last))
        cursor = last + 1
    if cursor < num_frames:
        spans.append((cursor, num_frames - 1))
    return spans
