"""Feature windows x and latent windows z for the animator, split by sequence.

Training and validation items are windows of ``window`` frames, read a whole batch at a time: one fancy index
per array instead of 32 small reads and a collate, so loading stays a small fraction of a step even for
2048-d features. Test and predict items are whole sequences: the animator predicts a sequence with overlapping
windows and is scored on every frame of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from avatar_lightning.cache.layout import feature_array, latent_array, valid_array
from avatar_lightning.cache.manifest import SequenceRecord
from avatar_lightning.errors import CacheError
from datamodules.windows import CacheDataModule, CacheWindowDataset, ResumableDataLoader, resumable_shuffle


class BatchedWindows(CacheWindowDataset):
    """Item ``[i, j, ...]`` (a list of window indices) is a whole batch: ``(B, T, ...)`` tensors."""

    def __getitem__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        frames = self.starts[np.asarray(indices, dtype=np.int64)][:, None] + np.arange(self.window)
        batch = {key: torch.from_numpy(np.asarray(self._map(name)[frames])) for key, name in self.arrays.items()}
        batch["frame_index"] = torch.from_numpy(frames)
        return batch


class SequenceDataset(Dataset):
    """Item ``i`` is sequence ``i`` whole: ``(L, ...)`` tensors plus ``frame_index`` and the sequence's name."""

    def __init__(self, source: CacheWindowDataset, sequences: Sequence[SequenceRecord]) -> None:
        self.source, self.sequences = source, list(sequences)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict[str, object]:
        seq = self.sequences[index]
        rows = slice(seq.first, seq.last + 1)
        item: dict[str, object] = {
            key: torch.from_numpy(np.array(self.source._map(name)[rows])) for key, name in self.source.arrays.items()
        }
        item["frame_index"] = torch.arange(seq.first, seq.last + 1)
        item["sequence"] = seq.name
        return item


class AnimatorDataModule(CacheDataModule):
    """``x (B, T, D) float32`` features, ``valid (B, T) bool`` (a face was found), ``z (B, T, Z)`` latents.

    Frames without a face keep their interpolated features in x, and ``valid`` keeps them out of the loss and
    the scores.

    Args:
        cache_dir: the capture cache folder.
        features: feature output name: ``features/<features>`` (``python -m avatar_lightning features``).
        latents: head VAE run name: ``latents/<latents>`` (``python -m avatar_lightning encode``).
        window: frames per training window (the paper's 8).
        stride: frames between training window starts.
        batch_size: windows per batch (the paper's 32).
        num_workers: DataLoader workers; batched reads make 0 the fastest choice on small machines.
        seed: seeds the training shuffle.
        train_splits: the splits to train on.
    """

    def __init__(self, cache_dir: str, features: str = "mediapipe", latents: str = "head_vae", window: int = 8,
                 stride: int = 1, batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 train_splits: list[str] | None = None) -> None:
        arrays = {"x": feature_array(features), "valid": valid_array(features), "z": latent_array(latents)}
        super().__init__(cache_dir, arrays, window=window, stride=stride, batch_size=batch_size,
                         num_workers=num_workers, seed=seed, train_splits=train_splits)
        self.features, self.latents = features, latents
        self.sequence_sets: dict[str, SequenceDataset] = {}

    # ------------------------------------------------------------------ sizes and statistics
    @property
    def feature_dim(self) -> int:
        return self.cache.record(self.arrays["x"]).shape[1]

    @property
    def latent_dim(self) -> int:
        return self.cache.record(self.arrays["z"]).shape[1]

    def _training_rows(self) -> np.ndarray:
        rows = [np.arange(s.first, s.last + 1) for s in self.cache.sequences_in(self.train_splits)]
        return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)

    def training_frames(self) -> tuple[np.ndarray, np.ndarray]:
        """Features and latents ``(M, D), (M, Z)`` of the training frames with a valid face (for baselines)."""
        chunks = list(self.training_chunks())
        return np.concatenate([x for x, _ in chunks]), np.concatenate([z for _, z in chunks])

    def training_chunks(self, chunk: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """:meth:`training_frames` ``chunk`` rows at a time, so a sum over them does not grow with the capture."""
        cache = self.cache
        rows = self._training_rows()
        rows = rows[np.asarray(cache.array(self.arrays["valid"])[rows], dtype=bool)]
        if len(rows) == 0:
            raise CacheError(f"{self.cache_dir}: no training frame has a valid {self.features!r} feature")
        x, z = cache.array(self.arrays["x"]), cache.array(self.arrays["z"])
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            yield np.asarray(x[part], dtype=np.float32), np.asarray(z[part], dtype=np.float32)

    def statistics(self, chunk: int = 4096) -> dict[str, np.ndarray]:
        """Mean and standard deviation of features (valid frames) and latents over the training split.

        Read in chunks, so memory does not grow with the capture. Standard deviations are floored, so a constant
        feature (e.g. a landmark fixed by the alignment) normalises to zero instead of dividing by zero.
        """
        cache = self.cache
        x, valid, z = (cache.array(self.arrays[k]) for k in ("x", "valid", "z"))
        rows = self._training_rows()
        sums = {"x": np.zeros(x.shape[1]), "xx": np.zeros(x.shape[1]), "z": np.zeros(z.shape[1]),
                "zz": np.zeros(z.shape[1])}
        n_x = n_z = 0
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            ok = np.asarray(valid[part], dtype=bool)
            xs = np.asarray(x[part[ok]], dtype=np.float64)
            zs = np.asarray(z[part], dtype=np.float64)
            if not np.isfinite(xs).all() or not np.isfinite(zs).all():
                raise CacheError(f"{self.cache_dir}: non-finite values in {self.arrays['x']} or {self.arrays['z']}")
            sums["x"] += xs.sum(0)
            sums["xx"] += (xs**2).sum(0)
            sums["z"] += zs.sum(0)
            sums["zz"] += (zs**2).sum(0)
            n_x, n_z = n_x + len(xs), n_z + len(zs)
        if n_x == 0:
            raise CacheError(f"{self.cache_dir}: no training frame has a valid {self.features!r} feature")

        def moments(s: np.ndarray, ss: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
            mean = s / n
            std = np.sqrt(np.maximum(ss / n - mean**2, 0.0))
            return mean.astype(np.float32), np.maximum(std, 1e-6 + 1e-3 * std.max()).astype(np.float32)

        feature_mean, feature_std = moments(sums["x"], sums["xx"], n_x)
        latent_mean, latent_std = moments(sums["z"], sums["zz"], n_z)
        return {"feature_mean": feature_mean, "feature_std": feature_std,
                "latent_mean": latent_mean, "latent_std": latent_std}

    # ------------------------------------------------------------------ datasets and loaders
    def _dataset(self, splits: Sequence[str], stride: int, only: str | None = None) -> BatchedWindows:
        return BatchedWindows(self.cache_dir, self.arrays, self.cache.sequences_in(splits), self.window, stride,
                              only)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        for split, wanted in (("test", ("test", None)), ("predict", ("predict", None))):
            if stage in wanted:
                splits = ["test"] if split == "test" else ["train", "val", "test"]
                sequences = self.cache.sequences_in(splits)
                source = self.datasets[split]
                self.sequence_sets[split] = SequenceDataset(source, sequences)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        if shuffle:  # whole batches, dealt out to DDP processes batch by batch
            batches = resumable_shuffle(self, len(dataset), self.seed, self.batch_size, batches=True)
        else:
            batches = BatchSampler(SequentialSampler(dataset), self.batch_size, drop_last=False)
        return (ResumableDataLoader if shuffle else DataLoader)(dataset, batch_size=None, sampler=batches,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def _sequence_loader(self, split: str) -> DataLoader:
        if len(self.sequence_sets[split]) == 0:
            raise CacheError(f"{self.cache_dir}: no sequence in split {split!r} to animate")
        return DataLoader(self.sequence_sets[split], batch_size=None, num_workers=0)

    def test_dataloader(self) -> DataLoader:
        """Whole held-out sequences, one per batch."""
        return self._sequence_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Whole sequences of every split, one per batch."""
        return self._sequence_loader("predict")
