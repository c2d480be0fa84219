"""Windows of consecutive frames over a capture cache: the base every stage's DataModule builds on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from avatar_lightning.cache.manifest import SPLITS, SequenceRecord
from avatar_lightning.cache.pages import PageBudget
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError


def window_starts(sequences: Sequence[SequenceRecord], window: int, stride: int = 1) -> np.ndarray:
    """First frames of every ``window``-long run that lies inside one sequence (never across two).

    A sequence shorter than ``window`` contributes nothing.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got window={window}, stride={stride}")
    starts = [np.arange(s.first, s.last - window + 2, stride, dtype=np.int64) for s in sequences]
    return np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)


class ResumableShuffle(DistributedSampler):
    """The training order: shuffled per epoch from ``(seed, epoch)`` alone, dealt out to DDP processes, resumable.

    torch's ``RandomSampler`` draws each epoch from one generator that a checkpoint does not hold, so a fit
    resumed from ``last.ckpt`` would see other batches than the run it continues. Here epoch ``e``'s order is a
    pure function of ``(seed, e)`` (Lightning calls :meth:`set_epoch`) and :meth:`resume_at` skips the samples the
    killed run had already trained on.

    Under DDP (``num_replicas`` W > 1) process ``rank`` takes the order's units ``rank, rank + W, ...``
    (DistributedSampler's rule, the order padded with its own beginning to a multiple of W so every process has
    as many batches). A step's W batches of B are then the order's next W·B samples: the batch one process takes
    at a batch size of W·B, so a DDP fit sees the samples of a one-process fit, step by step. Being a
    ``DistributedSampler`` it is used as it is: Lightning would otherwise wrap it in one of its own, which deals
    out a second shuffle of the order (another seed) and cannot resume part-way into an epoch.

    Args:
        size: items in the dataset.
        seed: seeds the order.
        batch_size: items per batch of one process.
        num_replicas: DDP processes (W).
        rank: this process's rank.
        batches: yield whole batches (lists of ``batch_size`` indices), dealt out batch by batch, for a dataset
            that reads a batch at a time (the animator's); otherwise single indices for the DataLoader to batch.
    """

    def __init__(self, size: int, seed: int, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 batches: bool = False) -> None:
        units = -(-size // batch_size) if batches else size
        super().__init__(range(units), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.size, self.batch_size, self.batches = size, batch_size, batches
        self.samples_per_step = batch_size * num_replicas  # what one step takes from the order, all processes
        self._skip_steps, self._skip_step_size = 0, self.samples_per_step  # the killed run's, when resuming

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next iteration is epoch ``epoch`` without the samples of its first ``batches_done`` steps."""
        self.epoch, self._skip_steps = int(epoch), int(batches_done)

    def resumed_from(self, samples_per_step: int) -> None:
        """The killed run's steps took ``samples_per_step`` samples each (its batch size x processes)."""
        self._skip_step_size = int(samples_per_step)

    def order(self, epoch: int) -> list[int]:
        return torch.randperm(self.size, generator=self.generator(epoch)).tolist()

    def generator(self, epoch: int, *stream: int) -> torch.Generator:
        """A torch generator that is a pure function of ``(seed, epoch, *stream)``."""
        seed = int(np.random.SeedSequence([self.seed, epoch, *stream]).generate_state(1, np.uint64)[0] >> 1)
        return torch.Generator().manual_seed(seed)

    def _units(self, order: list[int]) -> list:
        if not self.batches:
            return order
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def __iter__(self):  # type: ignore[no-untyped-def]
        skip, self._skip_steps = self._skip_steps * self._skip_step_size, 0
        order = self.order(self.epoch)
        rest, whole = self._units(order[skip:]), self._units(order)
        padding = -len(rest) % self.num_replicas
        while whole and len(whole) < padding:  # fewer units than processes: DistributedSampler repeats them as well
            whole = whole + whole
        return iter((rest + whole[:padding])[self.rank::self.num_replicas])

    def __len__(self) -> int:
        """One process's units in a whole epoch: Lightning's batch counter resumes part-way through it."""
        return self.num_samples


def resumable_shuffle(datamodule: pl.LightningDataModule, size: int, seed: int, batch_size: int,
                      batches: bool = False) -> ResumableShuffle:
    """The training sampler of this process, positioned where a restored fit loop left off (if resuming)."""
    trainer = datamodule.trainer
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = ResumableShuffle(size, seed, batch_size, world, rank, batches)
    if trainer is not None and trainer.fit_loop.restarting:
        epoch_loop = trainer.fit_loop.epoch_loop
        sampler.resume_at(trainer.fit_loop.epoch_progress.current.processed,
                          epoch_loop.batch_progress.current.completed)
    return sampler


class ResumableDataLoader(DataLoader):
    """A training ``DataLoader`` over a :class:`ResumableShuffle` that Lightning treats as resumable.

    The position itself is restored by :func:`resumable_shuffle` from the fit loop's own counters (they are in
    every checkpoint); this loader's state records the shuffle's seed, so that resuming with another seed, which
    would silently train on other batches, is refused, and the samples one step took (batch size x processes),
    so that a fit resumed with another number of processes or batch size skips what the killed run trained on.
    """

    def _shuffle(self) -> ResumableShuffle | None:
        return self.sampler if isinstance(self.sampler, ResumableShuffle) else None

    def __iter__(self):  # type: ignore[no-untyped-def]
        # DataLoader draws its workers' base seed from the *global* torch generator each time an iterator is
        # made; a fit resumed mid-epoch makes one the unkilled run did not, which would shift every random draw
        # after it. Its own generator, a function of (seed, epoch), keeps the global stream out of it.
        shuffle = self._shuffle()
        if shuffle is not None:
            self.generator = shuffle.generator(shuffle.epoch, 1)  # stream 1: the order is stream 0
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        shuffle = self._shuffle()
        if shuffle is None:
            return {}
        return {"seed": shuffle.seed, "size": shuffle.size, "samples_per_step": shuffle.samples_per_step}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        shuffle = self._shuffle()
        saved = {key: state_dict[key] for key in ("seed", "size") if key in state_dict}
        now = {} if shuffle is None else {"seed": shuffle.seed, "size": shuffle.size}
        if saved and saved != now:
            raise CacheError(f"the checkpoint was trained with data order {saved} (shuffle seed, windows) but "
                             f"this run has {now}; resume with the same data.init_args.seed and cache")
        if shuffle is not None and "samples_per_step" in state_dict:  # checkpoints before it: this run's
            shuffle.resumed_from(state_dict["samples_per_step"])


class CacheWindowDataset(Dataset):
    """Item ``i`` is a dict of ``(T, ...)`` tensors, one per requested array, for frames ``s_i .. s_i+T-1``.

    Arrays are memory-mapped lazily in each worker process (a memory map does not survive pickling into
    workers), so only the rows of a window are ever read. Besides the arrays, every item carries
    ``frame_index`` ``(T,)`` int64. Dtypes are kept (uint8 frames stay uint8; the model converts).

    Args:
        root: the capture cache folder.
        arrays: batch key -> cache array name, e.g. ``{"x": "features/mediapipe", "z": "latents/vae"}``.
        sequences: the sequences windows are drawn from.
        window: frames per item (T).
        stride: frames between consecutive window starts.
        only: a per-frame bool array; windows holding a frame where it is False are left out (None, or a cache
            without that array: every window).
    """

    def __init__(
        self,
        root: str | Path,
        arrays: Mapping[str, str],
        sequences: Sequence[SequenceRecord],
        window: int,
        stride: int = 1,
        only: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.arrays = dict(arrays)
        self.window = window
        self.starts = window_starts(sequences, window, stride)
        cache = CaptureCache(self.root)
        if only is not None and cache.has(only):
            keep = np.asarray(cache.array(only), dtype=bool)
            whole = np.stack([keep[self.starts + k] for k in range(window)]).all(0) if len(self.starts) else keep[:0]
            self.starts = self.starts[whole]
        for key, name in self.arrays.items():
            rec = cache.record(name)  # clear error naming the producer if missing
            if not rec.per_frame:
                raise CacheError(f"{self.root}: array {name!r} (batch key {key!r}) is not per-frame")
            cache.require_finite(name)  # header against the manifest, and no NaN/Inf to train on, once up front
        self._maps: dict[str, np.ndarray] = {}
        self._pages = PageBudget()  # a long capture read through its maps would otherwise stay resident

    def __len__(self) -> int:
        return len(self.starts)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}, "_pages": PageBudget()}

    def first_frames(self, key: str) -> np.ndarray:
        """Every item's first frame of one batch key, stacked ``(N, ...)``: statistics over a split (read whole,
        so for small per-frame arrays such as blend weights)."""
        return np.asarray(self._map(self.arrays[key])[self.starts])

    def _map(self, name: str) -> np.ndarray:
        if name not in self._maps:
            self._maps[name] = CaptureCache(self.root).array(name)
        return self._maps[name]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = int(self.starts[index])
        stop = start + self.window
        item = {}
        for key, name in self.arrays.items():
            rows = np.array(self._map(name)[start:stop])
            self._pages.charge(self._map(name), rows.nbytes)
            item[key] = torch.from_numpy(rows)
        item["frame_index"] = torch.arange(start, stop, dtype=torch.int64)
        return item


class CacheDataModule(pl.LightningDataModule):
    """Batches of frame windows from a capture cache, split by sequence.

    Training windows are shuffled with a seeded generator; validation, test and predict windows keep frame
    order. ``predict`` covers every sequence of every split (e.g. to encode or extract features for all
    frames). Subclasses name the arrays they need; the windowing, splits and loaders live here once.

    Args:
        cache_dir: the capture cache folder.
        arrays: batch key -> cache array name.
        window: frames per item (T); 1 for per-frame stages.
        stride: frames between training window starts (evaluation uses ``eval_stride``).
        eval_stride: frames between validation/test/predict window starts (``window`` tiles without overlap).
        batch_size: windows per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the training shuffle.
        train_splits: which splits train on (``val`` may be added once model selection is done).
        only: a per-frame bool array: training, validation and test windows hold only frames where it is True
            (predict still covers every frame); a cache without it uses every frame.
    """

    def __init__(
        self,
        cache_dir: str,
        arrays: dict[str, str],
        window: int = 8,
        stride: int = 1,
        eval_stride: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        train_splits: list[str] | None = None,
        only: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.only = only
        self.cache_dir = cache_dir
        self.arrays = dict(arrays)
        self.window = window
        self.stride = stride
        self.eval_stride = eval_stride or window
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_splits = list(train_splits or ["train"])
        bad = set(self.train_splits) - set(SPLITS)
        if bad:
            raise ValueError(f"train_splits: unknown split(s) {sorted(bad)}; splits are {SPLITS}")
        self.datasets: dict[str, CacheWindowDataset] = {}

    @property
    def cache(self) -> CaptureCache:
        return CaptureCache(self.cache_dir)

    def _dataset(self, splits: Sequence[str], stride: int, only: str | None = None) -> CacheWindowDataset:
        return CacheWindowDataset(self.cache_dir, self.arrays, self.cache.sequences_in(splits), self.window, stride,
                                  only)

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None):
            self.datasets["train"] = self._dataset(self.train_splits, self.stride, self.only)
            if len(self.datasets["train"]) == 0:
                raise CacheError(
                    f"{self.cache_dir}: no training window of {self.window} frames in split(s) {self.train_splits}"
                )
        if stage in ("fit", "validate", None):
            self.datasets["val"] = self._dataset(["val"], self.eval_stride, self.only)
        if stage in ("test", None):
            self.datasets["test"] = self._dataset(["test"], self.eval_stride, self.only)
        if stage in ("predict", None):
            self.datasets["predict"] = self._dataset(SPLITS, self.eval_stride)  # every frame

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        return (ResumableDataLoader if shuffle else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            sampler=resumable_shuffle(self, len(dataset), self.seed, self.batch_size) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        # A cache without validation sequences simply has no validation loop.
        return self._loader("val", shuffle=False) if len(self.datasets["val"]) else []

    def test_dataloader(self) -> DataLoader:
        if len(self.datasets["test"]) == 0:
            raise CacheError(f"{self.cache_dir}: no test sequence (split 'test') with {self.window} frames")
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
