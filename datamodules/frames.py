"""Every frame of one camera, in order: the input of per-frame predictors (feature extraction, ...)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from torch.utils.data import DataLoader, Dataset, DistributedSampler

from avatar_lightning.cache.layout import frames_array
from avatar_lightning.cache.manifest import SequenceRecord
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError
from datamodules.windows import CacheDataModule, CacheWindowDataset


class ContiguousSampler(DistributedSampler):
    """Rank ``r`` of ``W`` gets one contiguous block of the dataset, in order (the last blocks may be shorter).

    Lightning's predict sampler would deal out every W-th frame instead, which breaks what a stateful
    extractor relies on (a face tracker, a crop smoothed over time). Subclassing ``DistributedSampler`` tells
    Lightning not to wrap it again.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        total = len(dataset)  # type: ignore[arg-type]
        block = math.ceil(total / num_replicas) if num_replicas else total
        self.start, self.stop = min(rank * block, total), min((rank + 1) * block, total)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class FramesDataModule(CacheDataModule):
    """``predict`` batches of ``frames (B, 1, H, W, 3) uint8`` and ``frame_index (B, 1)`` over every frame.

    All frames 0..N-1 of ``camera`` in order, whatever their sequences (sequence starts are for the model to
    reset on). Under several processes each rank gets a contiguous block (:class:`ContiguousSampler`).

    Args:
        cache_dir: the capture cache folder.
        camera: which camera's frames (default: the only camera, else the first listed).
        batch_size: frames per batch.
        num_workers: DataLoader worker processes.
    """

    def __init__(self, cache_dir: str, camera: str | None = None, batch_size: int = 16, num_workers: int = 0) -> None:
        self.camera = resolve_camera(CaptureCache(cache_dir), camera)
        super().__init__(cache_dir, {"frames": frames_array(self.camera)}, window=1, batch_size=batch_size,
                         num_workers=num_workers)

    def setup(self, stage: str | None = None) -> None:
        if stage not in ("predict", None):
            raise CacheError(f"FramesDataModule serves predict only, not {stage!r}")
        cache = self.cache
        everything = [SequenceRecord("all", 0, cache.num_frames - 1, "test")] if cache.num_frames else []
        self.datasets["predict"] = CacheWindowDataset(self.cache_dir, self.arrays, everything, window=1)

    def predict_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        dataset = self.datasets["predict"]
        return DataLoader(dataset, batch_size=self.batch_size, sampler=ContiguousSampler(dataset, world, rank),
                          num_workers=self.num_workers, persistent_workers=False)


def resolve_camera(cache: CaptureCache, camera: str | None) -> str:
    """``camera`` checked against the cache, or its default: the only camera, else the first listed."""
    if camera is not None:
        return cache.camera(camera).name
    if not cache.cameras:
        raise CacheError(f"{cache.root}: the cache lists no camera; frames come from `synth` or `ingest`")
    return cache.cameras[0].name
