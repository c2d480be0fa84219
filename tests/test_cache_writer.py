"""The prediction writer: per-frame arrays into the cache, every frame exactly once, all or nothing."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from avatar_lightning.cache import CacheError, CaptureCache
from avatar_lightning.testing import FEATURES
from callbacks.cache_writer import SHARDS_DIR, CacheWriter
from datamodules import CacheDataModule, FramesDataModule

ARRAYS = {"double": "latents/double", "positive": "latents/double.positive", "image": "renders/toy/front"}


class Doubler(pl.LightningModule):
    """predict_step: twice the toy features, their sign as a mask, and the frame itself as a render."""

    def __init__(self, fail_at: int | None = None, index_map: Any = None) -> None:
        super().__init__()
        self.fail_at, self.index_map = fail_at, index_map

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        if batch_idx == self.fail_at:
            raise RuntimeError("boom")
        index = batch["frame_index"][:, 0]
        if self.index_map is not None:
            index = self.index_map(index)
        x = batch["x"][:, 0]
        return {"frame_index": index, "double": 2 * x, "positive": x[:, 0] > 0, "image": batch["frames"][:, 0],
                "ignored": torch.zeros(len(x))}


def _data(cache: CaptureCache, batch_size: int = 7) -> CacheDataModule:
    return CacheDataModule(str(cache.root), {"x": FEATURES, "frames": "cameras/front/frames"}, window=1,
                           batch_size=batch_size)


def _predict(cache: CaptureCache, model: pl.LightningModule, writer: CacheWriter, **trainer: Any) -> None:
    pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
               callbacks=[writer], **trainer).predict(model, datamodule=_data(cache), return_predictions=False)


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or SHARDS_DIR in p.parts]


def test_writes_every_array(tiny_cache: CaptureCache) -> None:
    _predict(tiny_cache, Doubler(), CacheWriter(tiny_cache.root, ARRAYS, stage="toy"))
    cache = CaptureCache(tiny_cache.root)
    x = cache.read(FEATURES)
    np.testing.assert_array_equal(cache.read("latents/double"), 2 * x)
    np.testing.assert_array_equal(cache.read("latents/double.positive"), x[:, 0] > 0)
    np.testing.assert_array_equal(cache.read("renders/toy/front"), cache.read("cameras/front/frames"))
    for name in ARRAYS.values():
        record = cache.record(name)
        assert record.per_frame and record.stage == "toy"
    assert cache.record("latents/double.positive").dtype == "bool"
    assert not cache.has("ignored") and not _leftovers(cache.root)


def test_finalize_sees_complete_arrays_before_commit(tiny_cache: CaptureCache) -> None:
    seen = {}

    def finalize(arrays: dict[str, np.ndarray]) -> None:
        seen.update({name: array.shape for name, array in arrays.items()})
        assert not CaptureCache(tiny_cache.root).has("latents/double")  # not committed yet
        arrays["latents/double"][:] += 1

    _predict(tiny_cache, Doubler(), CacheWriter(tiny_cache.root, ARRAYS, stage="toy", finalize=finalize))
    assert seen["latents/double"] == (60, 5)
    cache = CaptureCache(tiny_cache.root)
    np.testing.assert_allclose(cache.read("latents/double"), 2 * cache.read(FEATURES) + 1)


def test_replaces_an_existing_array(tiny_cache: CaptureCache) -> None:
    writer = CacheWriter(tiny_cache.root, {"double": "latents/toy"}, stage="toy")
    _predict(tiny_cache, Doubler(), writer)
    cache = CaptureCache(tiny_cache.root)
    assert cache.record("latents/toy").shape == (60, 5)  # was (60, 3)
    np.testing.assert_array_equal(cache.read("latents/toy"), 2 * cache.read(FEATURES))


@pytest.mark.parametrize("problem, match", [
    ({"limit_predict_batches": 3}, "39 frame.*never predicted"),  # 3 batches of 7 = 21 of 60 frames
    ({"index_map": lambda i: i % 50}, "predicted twice"),
    ({"fail_at": 4}, "boom"),
])
def test_incomplete_prediction_commits_nothing(tiny_cache: CaptureCache, problem: dict, match: str) -> None:
    before = CaptureCache(tiny_cache.root).manifest.arrays
    trainer = {k: v for k, v in problem.items() if k == "limit_predict_batches"}
    model = Doubler(**{k: v for k, v in problem.items() if k != "limit_predict_batches"})
    with pytest.raises((CacheError, RuntimeError), match=match):
        _predict(tiny_cache, model, CacheWriter(tiny_cache.root, ARRAYS, stage="toy"), **trainer)
    cache = CaptureCache(tiny_cache.root)
    assert cache.manifest.arrays == before
    assert not _leftovers(cache.root) and not list(cache.root.glob("renders/**/*.npy"))


def test_bad_outputs_are_named(tiny_cache: CaptureCache) -> None:
    with pytest.raises(CacheError, match="lacks 'missing'"):
        _predict(tiny_cache, Doubler(), CacheWriter(tiny_cache.root, {"missing": "latents/x"}, stage="toy"))
    with pytest.raises(CacheError, match="outside 0..59"):
        _predict(tiny_cache, Doubler(index_map=lambda i: i + 30), CacheWriter(tiny_cache.root, ARRAYS, stage="toy"))
    assert not _leftovers(tiny_cache.root)


# ---------------------------------------------------------------------- several ranks
class _Strategy:
    """Barrier and broadcast between threads standing in for DDP ranks."""

    def __init__(self, shared: SimpleNamespace, rank: int) -> None:
        self.shared, self.rank = shared, rank

    def barrier(self, name: str | None = None) -> None:
        self.shared.barrier.wait(timeout=30)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if self.rank == src:
            self.shared.value = obj
        self.shared.barrier.wait(timeout=30)
        value = self.shared.value
        self.shared.barrier.wait(timeout=30)
        return value


def _run_ranks(cache: CaptureCache, blocks: list[range], world: int = 2) -> list[BaseException | None]:
    """Each rank writes its block of frames through its own writer, concurrently; returns each rank's error."""
    shared = SimpleNamespace(barrier=threading.Barrier(world), value=None)
    x = torch.from_numpy(cache.read(FEATURES))
    errors: list[BaseException | None] = [None] * world

    def rank(r: int) -> None:
        trainer = SimpleNamespace(global_rank=r, world_size=world, strategy=_Strategy(shared, r))
        writer = CacheWriter(cache.root, {"double": "latents/double", "positive": "latents/double.positive"}, "toy")
        try:
            writer.on_predict_start(trainer, None)
            rows = list(blocks[r])
            for i in range(0, len(rows), 8):
                index = torch.tensor(rows[i : i + 8])
                writer.write_on_batch_end(trainer, None, {"frame_index": index, "double": 2 * x[index],
                                                          "positive": x[index, 0] > 0}, None, None, i, 0)
            writer.on_predict_end(trainer, None)
        except BaseException as err:  # collected for the assertions
            errors[r] = err
            writer.on_exception(trainer, None, err)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return errors


def test_ranks_write_shards_merged_by_rank_zero(tiny_cache: CaptureCache) -> None:
    errors = _run_ranks(tiny_cache, [range(0, 30), range(30, 60)])
    assert errors == [None, None]
    cache = CaptureCache(tiny_cache.root)
    np.testing.assert_array_equal(cache.read("latents/double"), 2 * cache.read(FEATURES))
    np.testing.assert_array_equal(cache.read("latents/double.positive"), cache.read(FEATURES)[:, 0] > 0)
    assert not _leftovers(cache.root) and not (cache.root / SHARDS_DIR).exists()


def test_ranks_overlapping_or_short_commit_nothing(tiny_cache: CaptureCache) -> None:
    errors = _run_ranks(tiny_cache, [range(0, 35), range(30, 58)])
    assert all(isinstance(e, CacheError) for e in errors), errors
    assert "predicted more than once" in str(errors[0]) and "never predicted" in str(errors[0])
    assert "rank 1" in str(errors[1])
    cache = CaptureCache(tiny_cache.root)
    assert not cache.has("latents/double") and not _leftovers(cache.root)


class FrameMean(pl.LightningModule):
    """Each frame's mean intensity (module level: DDP spawn pickles it)."""

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"frame_index": batch["frame_index"][:, 0], "mean": batch["frames"][:, 0].float().mean((1, 2, 3))}


@pytest.mark.slow
def test_ddp_spawn_two_processes(tiny_cache: CaptureCache) -> None:
    """Real DDP on the CPU (gloo): contiguous blocks per rank, one merged commit."""
    writer = CacheWriter(tiny_cache.root, {"mean": "latents/frame_mean"}, stage="toy")
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[writer], use_distributed_sampler=False)
    trainer.predict(FrameMean(), datamodule=FramesDataModule(str(tiny_cache.root), batch_size=8),
                    return_predictions=False)
    cache = CaptureCache(tiny_cache.root)
    expected = cache.read("cameras/front/frames").astype(np.float32).mean((1, 2, 3))
    np.testing.assert_allclose(cache.read("latents/frame_mean"), expected, rtol=1e-6)
    assert not _leftovers(cache.root)
