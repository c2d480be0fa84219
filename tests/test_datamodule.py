"""The base DataModule: windows inside sequences, splits by sequence, seeded shuffling, workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar_lightning.cache import CacheError, CaptureCache, SequenceRecord
from avatar_lightning.testing import FEATURES, LATENTS
from datamodules import CacheDataModule, CacheWindowDataset, window_starts


def _sequence_of(frame: int, sequences: list[SequenceRecord]) -> str:
    return next(s.name for s in sequences if s.first <= frame <= s.last)


@pytest.mark.parametrize("window, stride", [(1, 1), (4, 1), (8, 3), (15, 1), (16, 1)])
def test_windows_never_cross_sequences(window: int, stride: int) -> None:
    rng = np.random.default_rng(window)
    lengths = rng.integers(1, 20, size=12)
    edges = np.concatenate([[0], np.cumsum(lengths)])
    sequences = [
        SequenceRecord(f"s{i}", int(a), int(b) - 1, "train")
        for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))
    ]
    starts = window_starts(sequences, window, stride)
    for start in starts:
        assert _sequence_of(int(start), sequences) == _sequence_of(int(start) + window - 1, sequences)
    expected = sum(max(0, (n - window) // stride + 1) for n in lengths)
    assert len(starts) == expected


def test_window_starts_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="window and stride"):
        window_starts([], 0)


def test_dataset_items(tiny_cache: CaptureCache) -> None:
    dataset = CacheWindowDataset(tiny_cache.root, {"x": FEATURES, "z": LATENTS, "frames": "cameras/front/frames"},
                                 tiny_cache.sequences_in("train"), window=4)
    assert len(dataset) == (15 - 3) + (15 - 3) + (10 - 3)
    item = dataset[12]  # first window of train_b
    assert item["x"].shape == (4, 5) and item["z"].shape == (4, 3) and item["frames"].shape == (4, 6, 8, 3)
    assert item["frames"].dtype == torch.uint8
    assert item["frame_index"].tolist() == [15, 16, 17, 18]
    np.testing.assert_array_equal(item["x"].numpy(), tiny_cache.read(FEATURES, 15, 19))


def test_dataset_refuses_missing_or_static_arrays(tiny_cache: CaptureCache) -> None:
    with pytest.raises(CacheError, match=r"features/mediapipe.*features --cache DIR"):
        CacheWindowDataset(tiny_cache.root, {"x": "features/mediapipe"}, tiny_cache.sequences, window=2)
    tiny_cache.write_array("template/vertices", np.zeros((10, 3), np.float32), stage="t")
    with pytest.raises(CacheError, match="not per-frame"):
        CacheWindowDataset(tiny_cache.root, {"v": "template/vertices"}, tiny_cache.sequences, window=2)


def _frames_seen(loader) -> list[list[int]]:
    return [batch["frame_index"].tolist() for batch in loader]


def test_splits_are_by_sequence_and_training_is_seeded(tiny_cache: CaptureCache) -> None:
    dm = CacheDataModule(str(tiny_cache.root), {"x": FEATURES, "z": LATENTS}, window=4, batch_size=5, seed=3)
    dm.setup(None)
    train_frames = {f for batch in _frames_seen(dm.train_dataloader()) for w in batch for f in w}
    assert train_frames == set(range(40))
    val = _frames_seen(dm.val_dataloader())
    assert [w for batch in val for w in batch] == [[40, 41, 42, 43], [44, 45, 46, 47]]
    test = [w for batch in _frames_seen(dm.test_dataloader()) for w in batch]
    assert test == [[50, 51, 52, 53], [54, 55, 56, 57]]
    predict = [w for batch in _frames_seen(dm.predict_dataloader()) for w in batch]
    assert predict[0] == [0, 1, 2, 3] and predict[-1] == [54, 55, 56, 57]

    first = _frames_seen(dm.train_dataloader())
    again = CacheDataModule(str(tiny_cache.root), {"x": FEATURES}, window=4, batch_size=5, seed=3)
    again.setup("fit")
    assert _frames_seen(again.train_dataloader()) == first
    other = CacheDataModule(str(tiny_cache.root), {"x": FEATURES}, window=4, batch_size=5, seed=4)
    other.setup("fit")
    assert _frames_seen(other.train_dataloader()) != first


def test_worker_processes_read_the_same_windows(tiny_cache: CaptureCache) -> None:
    single = CacheDataModule(str(tiny_cache.root), {"x": FEATURES}, window=8, batch_size=4)
    multi = CacheDataModule(str(tiny_cache.root), {"x": FEATURES}, window=8, batch_size=4, num_workers=2)
    single.setup("predict")
    multi.setup("predict")
    for a, b in zip(single.predict_dataloader(), multi.predict_dataloader(), strict=True):
        torch.testing.assert_close(a["x"], b["x"])


def test_window_longer_than_every_training_sequence(tiny_cache: CaptureCache) -> None:
    dm = CacheDataModule(str(tiny_cache.root), {"x": FEATURES}, window=16)
    with pytest.raises(CacheError, match="no training window of 16 frames"):
        dm.setup("fit")


def test_unknown_train_split() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        CacheDataModule("unused", {"x": FEATURES}, train_splits=["training"])


def test_windows_can_be_limited_to_marked_frames(tiny_cache: CaptureCache) -> None:
    """``only``: a window holding one unmarked frame is left out of training, validation and test; predict keeps
    every window; a cache without the array uses every frame."""
    marked = np.ones(tiny_cache.num_frames, bool)
    marked[[5, 44]] = False  # one frame of train_a, one of val
    tiny_cache.write_array("tracking/face_seen", marked, stage="test", per_frame=True)
    data = CacheDataModule(str(tiny_cache.root), {"x": FEATURES}, window=4, stride=1, eval_stride=1,
                           only="tracking/face_seen")
    data.setup()
    for split in ("train", "val", "test"):
        starts = data.datasets[split].starts
        frames = starts[:, None] + np.arange(4)
        assert marked[frames].all(), split
    train = set(data.datasets["train"].starts.tolist())
    assert {2, 3, 4, 5} & train == set() and {0, 1, 6} <= train  # 5 lies in the windows starting at 2..5
    assert len(data.datasets["predict"]) == len(window_starts(tiny_cache.sequences, 4, 1))  # eval_stride 1
    unmarked = CacheDataModule(str(tiny_cache.root), {"x": FEATURES}, window=4, only="tracking/absent")
    unmarked.setup("fit")
    assert len(unmarked.datasets["train"]) == len(window_starts(tiny_cache.sequences_in("train"), 4, 1))
