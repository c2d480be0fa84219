"""Per-frame predictions into the capture cache, atomically: features, latents, renders.

``predict_step`` returns a dict: ``frame_index (B,)`` int64 and named tensors ``(B, ...)``. :class:`CacheWriter`
maps output keys to cache arrays ``(N, ...)`` (N = the cache's frame count; shape after the first axis and dtype
come from the first batch) and fills rows as batches arrive, through memory maps: memory stays flat in the
capture's length. Run ``trainer.predict(..., return_predictions=False)``, or Lightning keeps every prediction.

At the end of predict every frame must have been written exactly once; then each array is committed atomically
(temporary file renamed, then listed in the manifest), optionally after a ``finalize`` pass over the complete
arrays. Otherwise (a frame missing or written twice, an exception, an interrupt) nothing is committed and the
temporary files are removed: the cache keeps its previous state.

Several processes (DDP, any number of nodes on a shared file system): each rank fills its own shard files
(sparse memory maps of the full shape plus a mask of the rows it wrote) under
``<cache>/.shards/<stage>-<token>/rank<k>/``; after a barrier rank 0 checks that the masks cover every frame
exactly once, merges the shards chunk by chunk into the final arrays, runs ``finalize``, commits and removes
the shards; a broadcast tells every rank whether it worked, so all of them raise on failure.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError

SHARDS_DIR = ".shards"
MERGE_CHUNK_ROWS = 256  # rows copied per step when merging shards
Finalize = Callable[[Mapping[str, np.ndarray]], None]


class _Aborted(Exception):
    """Thrown into open array writers so that they discard their temporary files."""


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _describe_frames(frames: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(f)) for f in frames[:limit])
    return f"{len(frames)} frame(s) ({shown}{', ...' if len(frames) > limit else ''})"


class CacheWriter(BasePredictionWriter):
    """Write ``predict_step`` outputs into per-frame cache arrays, all-or-nothing.

    Args:
        cache_dir: the capture cache.
        arrays: output key -> cache array name, e.g. ``{"z": "latents/run1"}``; keys missing from a batch are an
            error, extra keys are ignored.
        stage: recorded in the manifest as the writer of the arrays (e.g. ``features``, ``encode``).
        finalize: called on rank 0 with ``{array name: writable (N, ...) array}`` once every frame is in, before
            the commit (e.g. interpolate frames without a face).
    """

    def __init__(self, cache_dir: str | Path, arrays: Mapping[str, str], stage: str,
                 finalize: Finalize | None = None) -> None:
        super().__init__(write_interval="batch")
        if not arrays:
            raise ValueError("CacheWriter needs at least one output key -> array name")
        self.cache_dir = Path(cache_dir)
        self.arrays = dict(arrays)
        self.stage = stage
        self.finalize = finalize
        self._reset_state()

    def _reset_state(self) -> None:
        self._cache: CaptureCache | None = None
        self._num_frames = 0
        self._rank, self._world = 0, 1
        self._stack: contextlib.ExitStack | None = None
        self._outputs: dict[str, np.ndarray] = {}
        self._written: np.ndarray = np.zeros(0, dtype=bool)
        self._shard_root: Path | None = None

    # ------------------------------------------------------------------ lifecycle
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_state()
        self._cache = CaptureCache(self.cache_dir)
        self._num_frames = self._cache.num_frames
        self._rank, self._world = trainer.global_rank, trainer.world_size
        self._written = np.zeros(self._num_frames, dtype=bool)
        self._stack = contextlib.ExitStack()
        if self._world > 1:
            token = trainer.strategy.broadcast(uuid.uuid4().hex[:12], src=0)
            self._shard_root = self.cache_dir / SHARDS_DIR / f"{self.stage}-{token}"

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(prediction, Mapping) or "frame_index" not in prediction:
            raise CacheError("CacheWriter: predict_step must return a dict with 'frame_index' (B,) and named tensors")
        index = _to_numpy(prediction["frame_index"]).astype(np.int64).reshape(-1)
        if len(index) == 0:
            return
        if index.min() < 0 or index.max() >= self._num_frames:
            raise CacheError(f"CacheWriter: frame_index outside 0..{self._num_frames - 1}: "
                             f"{_describe_frames(index[(index < 0) | (index >= self._num_frames)])}")
        unique, counts = np.unique(index, return_counts=True)
        twice = np.concatenate([unique[counts > 1], unique[self._written[unique]]])
        if len(twice):
            raise CacheError(f"CacheWriter: {_describe_frames(np.unique(twice))} predicted twice; each frame "
                             "must be written exactly once (a sampler that repeats frames?)")
        for key, name in self.arrays.items():
            if key not in prediction:
                raise CacheError(f"CacheWriter: predict_step output lacks {key!r} (for {name}); it has "
                                 f"{sorted(prediction)}")
            value = _to_numpy(prediction[key])
            if value.shape[:1] != index.shape:
                raise CacheError(f"CacheWriter: {key!r} has {value.shape[0] if value.ndim else 0} rows but the batch "
                                 f"has {len(index)} frame indices")
            if key not in self._outputs:
                self._outputs[key] = self._open(key, name, value)
            out = self._outputs[key]
            if value.shape[1:] != out.shape[1:] or value.dtype != out.dtype:
                raise CacheError(f"CacheWriter: {key!r} changed from {out.dtype}{list(out.shape[1:])} to "
                                 f"{value.dtype}{list(value.shape[1:])} between batches")
            out[index] = value
        self._written[index] = True

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            if self._world == 1:
                self._commit_single()
            else:
                self._commit_sharded(trainer)
        finally:
            self._abort()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._abort()
        if self._shard_root is not None:
            shutil.rmtree(self._shard_root / f"rank{self._rank}", ignore_errors=True)

    # ------------------------------------------------------------------ single process
    def _open(self, key: str, name: str, value: np.ndarray) -> np.ndarray:
        assert self._cache is not None and self._stack is not None
        shape = (self._num_frames, *value.shape[1:])
        if self._world == 1:
            return self._stack.enter_context(
                self._cache.array_writer(name, shape, value.dtype, stage=self.stage, per_frame=True)
            )
        assert self._shard_root is not None
        path = self._shard_root / f"rank{self._rank}" / f"{list(self.arrays).index(key)}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Untouched rows of a fresh file are holes: a shard costs the disk of its own rows only.
        return np.lib.format.open_memmap(path, mode="w+", dtype=value.dtype, shape=shape)

    def _commit_single(self) -> None:
        assert self._stack is not None
        check_coverage(self._written.astype(np.int64), self.cache_dir, list(self.arrays.values()))
        if self.finalize is not None:
            self.finalize({self.arrays[key]: out for key, out in self._outputs.items()})
        self._outputs = {}
        stack, self._stack = self._stack, None
        stack.close()  # each array_writer renames its file into place and lists it in the manifest

    def _abort(self) -> None:
        """Discard whatever is open: the array writers remove their temporary files."""
        self._outputs = {}
        stack, self._stack = self._stack, None
        if stack is not None:
            with contextlib.suppress(_Aborted):
                stack.__exit__(_Aborted, _Aborted("prediction not committed"), None)

    # ------------------------------------------------------------------ several processes
    def _commit_sharded(self, trainer: pl.Trainer) -> None:
        assert self._shard_root is not None
        own = self._shard_root / f"rank{self._rank}"
        own.mkdir(parents=True, exist_ok=True)
        for out in self._outputs.values():
            out.flush()
        np.save(own / "written.npy", self._written)
        layout = {key: [list(out.shape), str(out.dtype)] for key, out in self._outputs.items()}
        (own / "layout.json").write_text(json.dumps(layout))
        self._outputs = {}
        trainer.strategy.barrier("cache_writer_shards")
        failure: BaseException | None = None
        if self._rank == 0:
            try:
                merge_shards(self._cache, self._shard_root, self._world, self.arrays, self.stage, self.finalize)
            except Exception as err:  # every rank must hear of it (below) before anyone raises
                failure = err
            finally:
                shutil.rmtree(self._shard_root, ignore_errors=True)
                with contextlib.suppress(OSError):
                    self._shard_root.parent.rmdir()  # only if no other run's shards are there
        message = trainer.strategy.broadcast(None if failure is None else f"{type(failure).__name__}: {failure}",
                                             src=0)
        if failure is not None:
            raise failure
        if message is not None:
            raise CacheError(f"CacheWriter (rank {self._rank}): rank 0 could not merge the shards: {message}")
        if self._cache is not None:
            self._cache.reload()


def check_coverage(counts: np.ndarray, cache_dir: Path, names: list[str]) -> None:
    """Raise unless every frame was predicted exactly once (``counts (N,)``: how often each was)."""
    missing, repeated = np.flatnonzero(counts == 0), np.flatnonzero(counts > 1)
    problems = []
    if len(missing):
        problems.append(f"{_describe_frames(missing)} never predicted")
    if len(repeated):
        problems.append(f"{_describe_frames(repeated)} predicted more than once")
    if problems:
        raise CacheError(
            f"CacheWriter: {'; '.join(problems)} of {len(counts)}; nothing was written to {cache_dir} "
            f"({', '.join(names)}). Predict over every frame (no limit_predict_batches, a sampler that covers "
            "each frame once)"
        )


def merge_shards(cache: CaptureCache | None, shard_root: Path, world: int, arrays: Mapping[str, str], stage: str,
                 finalize: Finalize | None) -> None:
    """Rank 0's half of the multi-process commit: check coverage, merge shards chunk by chunk, finalize, commit.

    ``shard_root/rank<k>/`` holds ``written.npy`` (N,) bool, ``layout.json`` (key -> shape, dtype; empty for a
    rank that received no batch) and ``<i>.npy`` for the i-th entry of ``arrays``.
    """
    assert cache is not None
    ranks = [shard_root / f"rank{r}" for r in range(world)]
    masks = [np.load(rank / "written.npy") for rank in ranks]
    check_coverage(np.sum(masks, axis=0), cache.root, list(arrays.values()))
    layout: dict[str, list] = {}
    for rank in ranks:
        layout = layout or json.loads((rank / "layout.json").read_text())
    with contextlib.ExitStack() as stack:
        outputs: dict[str, np.ndarray] = {}
        for i, (key, name) in enumerate(arrays.items()):
            shape, dtype = layout[key]
            out = stack.enter_context(cache.array_writer(name, shape, dtype, stage=stage, per_frame=True))
            for rank, mask in zip(ranks, masks, strict=True):
                if not mask.any():
                    continue
                shard = np.load(rank / f"{i}.npy", mmap_mode="r")
                for start in range(0, len(mask), MERGE_CHUNK_ROWS):
                    rows = np.flatnonzero(mask[start : start + MERGE_CHUNK_ROWS]) + start
                    if len(rows):
                        out[rows] = shard[rows]
            outputs[name] = out
        if finalize is not None:
            finalize(outputs)
        del outputs
