"""Extraction over a capture: Lightning predict, frame order and resets, faceless frames filled, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from avatar_lightning.cache import CacheError, CaptureCache, SequenceRecord
from avatar_lightning.cli import main
from avatar_lightning.features import FeatureBatch, FeatureExtractor, FeatureOutput, available_extractors, base
from avatar_lightning.features.extract import (
    covering_spans,
    fill_and_normalise,
    interpolate_invalid,
    normalise_running,
    subtract_running_mean,
    subtract_warmup_mean,
)
from avatar_lightning.features.run import extract_features
from datamodules import ContiguousSampler
from tests.features_fixtures import blank, frames_cache, moving_face_frames


class Recorder(FeatureExtractor):
    """A toy extractor: the frame's mean intensity and its index; logs the frames it sees and its resets."""

    name = "recorder"
    uses_accelerator = False
    log: list = []

    @property
    def outputs(self) -> tuple[FeatureOutput, ...]:
        return (FeatureOutput("recorder", 2, "mean intensity, then the same plus one"),)

    def forward(self, frames: Tensor) -> FeatureBatch:
        mean = frames.float().mean((1, 2, 3))
        self.log.append(("frames", len(frames)))
        valid = mean > 100  # the tiny cache's random frames average ~127.5; darkened ones fail
        return FeatureBatch({"recorder": torch.stack([mean, mean + 1], 1)}, valid)

    def reset(self) -> None:
        self.log.append(("reset", 0))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> type[Recorder]:
    monkeypatch.setitem(base._REGISTERED, "recorder", lambda **options: Recorder(**options))
    Recorder.log = []
    return Recorder


def test_registry() -> None:
    assert {"mediapipe", "deca"} <= set(available_extractors())
    with pytest.raises(CacheError, match="unknown feature extractor 'nope'"):
        base.build_extractor("nope")
    with pytest.raises(ValueError, match="already registered"):
        base.register_extractor("mediapipe", Recorder)


def test_contiguous_blocks_per_rank() -> None:
    data = list(range(10))
    blocks = [list(ContiguousSampler(data, 3, r)) for r in range(3)]  # type: ignore[arg-type]
    assert blocks == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(ContiguousSampler(data)) == data  # type: ignore[arg-type]


def test_interpolation_and_mean() -> None:
    values = np.arange(10, dtype=np.float32)[:, None] * np.array([[1.0, 10.0]], np.float32)
    valid = np.ones(10, bool)
    valid[[0, 3, 4, 9]] = False
    filled = values.copy()
    filled[[0, 3, 4, 9]] = -5
    interpolate_invalid(filled, valid, 0, 9)
    expected = values.copy()
    expected[0], expected[9] = values[1], values[8]  # held at the ends
    np.testing.assert_allclose(filled, expected)  # linear inside: the ramp comes back exactly
    arrays = {"features/x": filled.copy(), "features/x.valid": valid}
    fill_and_normalise(arrays, ["x"], [(0, 4), (5, 9)], relative="sequence")
    for a, b in [(0, 4), (5, 9)]:
        np.testing.assert_allclose(arrays["features/x"][a : b + 1][valid[a : b + 1]].mean(0), 0, atol=1e-5)
    one = {"features/x": np.ones((8, 2), np.float32), "features/x.valid": np.arange(8) >= 4}
    fill_and_normalise(one, ["x"], [(0, 3), (4, 7)], relative="sequence")
    assert not one["features/x"][:4].any()  # a sequence without any face: zeros, never a crash
    none = {"features/x": np.ones((4, 2), np.float32), "features/x.valid": np.zeros(4, bool)}
    with pytest.raises(CacheError, match="no face was found in any of the 4 frames"):
        fill_and_normalise(none, ["x"], [(0, 3)], relative="capture")  # a capture without any face: refused
    assert covering_spans([(2, 4), (7, 8)], 12) == [(0, 1), (2, 4), (5, 6), (7, 8), (9, 11)]


def _running_mean_by_hand(values: np.ndarray, valid: np.ndarray, first: int, last: int, warmup: int) -> np.ndarray:
    out = values.astype(np.float64).copy()
    index = [i for i in range(first, last + 1) if valid[i]]
    for t in range(first, last + 1):
        seen = [i for i in index if i <= t]
        used = seen if len(seen) >= warmup else index[:warmup]
        out[t] -= values[used].mean(0)
    return out


@pytest.mark.parametrize("chunk", [3, 4096])
def test_running_mean_is_causal_after_its_warm_up(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    import avatar_lightning.features.extract as extract

    monkeypatch.setattr(extract, "CHUNK_ROWS", chunk)  # chunk borders must not change the result
    rng = np.random.default_rng(0)
    values = rng.normal(size=(23, 3)).astype(np.float32)
    valid = rng.random(23) > 0.3
    expected = _running_mean_by_hand(values, valid, 2, 20, warmup=4)
    result = values.copy()
    subtract_running_mean(result, valid, 2, 20, warmup=4)
    np.testing.assert_allclose(result[2:21], expected[2:21], atol=1e-5)
    np.testing.assert_array_equal(result[:2], values[:2])  # outside the span: untouched
    # Causal: changing a frame after the warm-up leaves every earlier frame's value as it was.
    later = values.copy()
    last_warm = np.flatnonzero(valid[2:21])[3] + 2
    later[last_warm + 3 :] += 100
    changed = later.copy()
    subtract_running_mean(changed, valid, 2, 20, warmup=4)
    np.testing.assert_allclose(changed[2 : last_warm + 3], result[2 : last_warm + 3], atol=1e-5)
    # Through fill_and_normalise: interpolated rows are not counted, each sequence has its own estimate.
    arrays = {"features/x": values.copy(), "features/x.valid": valid}
    fill_and_normalise(arrays, ["x"], [(0, 10), (11, 22)], relative="running", warmup=2)
    filled = values.copy()
    interpolate_invalid(filled, valid, 0, 10)
    interpolate_invalid(filled, valid, 11, 22)
    for a, b in [(0, 10), (11, 22)]:
        np.testing.assert_allclose(arrays["features/x"][a : b + 1],
                                   _running_mean_by_hand(filled, valid, a, b, 2)[a : b + 1], atol=1e-5)
    no_face = np.ones((4, 2), np.float32)
    subtract_running_mean(no_face, np.zeros(4, bool), 0, 3, 2)
    assert (no_face == 1).all()


def test_running_zscore_divides_by_each_frames_own_spread(monkeypatch: pytest.MonkeyPatch) -> None:
    import avatar_lightning.features.extract as extract

    monkeypatch.setattr(extract, "CHUNK_ROWS", 5)
    rng = np.random.default_rng(1)
    values = (rng.normal(size=(30, 4)) * np.array([1.0, 10.0, 0.1, 1e-6])).astype(np.float32)
    valid = rng.random(30) > 0.2
    result = values.copy()
    normalise_running(result, valid, 0, 29, warmup=6)
    index = np.flatnonzero(valid)
    for t in range(30):
        seen = index[index <= t]
        used = values[seen if len(seen) >= 6 else index[:6]].astype(np.float64)
        std = used.std(0)
        std = np.maximum(std, 0.05 * np.median(std))  # the floor keeps the near-constant column from blowing up
        np.testing.assert_allclose(result[t], (values[t] - used.mean(0)) / std, rtol=1e-4, atol=1e-5)
    late = result[index[10] :][valid[index[10] :]]
    assert np.abs(late[:, 3]).max() < 1e-3  # the column that barely moves stays near zero
    assert 0.3 < late[:, :3].std() < 3  # the moving columns come out on one scale, whatever their units


def test_warmup_mean_is_the_first_valid_frames_held() -> None:
    values = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    valid = np.ones(20, bool)
    valid[[5, 6]] = False
    result = values.copy()
    subtract_warmup_mean(result, valid, 4, 15, warmup=3)
    np.testing.assert_allclose(result[4:16], values[4:16] - np.mean([4, 7, 8]))  # rows 5, 6 are not counted
    np.testing.assert_array_equal(result[:4], values[:4])
    arrays = {"features/x": values.copy(), "features/x.valid": valid}
    fill_and_normalise(arrays, ["x"], [(0, 9), (10, 19)], relative="warmup", warmup=2)
    np.testing.assert_allclose(arrays["features/x"][10:], values[10:] - 10.5)


def test_predict_resets_at_every_sequence(tiny_cache: CaptureCache, recorder: type[Recorder]) -> None:
    frames = tiny_cache.read("cameras/front/frames")
    frames[[3, 4, 20]] //= 4  # "no face" in three frames
    tiny_cache.write_array("cameras/front/frames", frames, stage="test", per_frame=True)
    summary = extract_features(str(tiny_cache.root), "recorder", batch_size=7, progress=False)
    cache = CaptureCache(tiny_cache.root)
    valid = cache.read("features/recorder.valid")
    assert np.flatnonzero(~valid).tolist() == [3, 4, 20]
    assert summary["recorder"]["frames_without_face"] == 3
    assert summary["recorder"]["frames_without_face_per_span"] == {"0..14": 2, "15..29": 1}
    values, means = cache.read("features/recorder"), frames.astype(np.float32).mean((1, 2, 3))
    np.testing.assert_allclose(values[valid, 0], means[valid], rtol=1e-5)
    np.testing.assert_allclose(values[3], values[2] + (values[5] - values[2]) / 3, rtol=1e-5)  # interpolated
    resets = sum(1 for kind, _ in Recorder.log if kind == "reset")
    assert resets == len(cache.sequences)  # one at each of the 5 sequence starts, batches spanning them split
    assert sum(n for kind, n in Recorder.log if kind == "frames") == 60
    assert cache.manifest.meta["features"]["recorder"]["camera"] == "front"
    assert cache.record("features/recorder").stage == "features"


def test_mediapipe_stage_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames = moving_face_frames(8, size=160)
    frames[3], frames[4] = blank(160), blank(160, value=30)
    cache = frames_cache(tmp_path / "cache", frames, [SequenceRecord("a", 0, 5, "train"),
                                                      SequenceRecord("b", 6, 7, "test")])
    assert main(["features", "--cache", str(cache.root), "--extractor", "mediapipe", "--batch-size", "3",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "features/mediapipe float32[8, 1434]" in out and "no face in 2 of 8 frames" in out
    cache.reload()
    valid = cache.read("features/mediapipe.valid")
    assert valid.tolist() == [True, True, True, False, False, True, True, True]
    x = cache.read("features/mediapipe")
    np.testing.assert_allclose(x[3], x[2] + (x[5] - x[2]) / 3, rtol=1e-4, atol=1e-5)
    meta = cache.manifest.meta["features"]["mediapipe"]
    assert meta["dim"] == 1434 and meta["frames_without_face"] == 2 and "Procrustes" in meta["layout"]
    # Mean-relative over the capture: the valid rows average to zero; the validity mask is unchanged.
    assert main(["features", "--cache", str(cache.root), "--extractor", "mediapipe", "--relative", "capture",
                 "--no-progress"]) == 0
    cache.reload()
    np.testing.assert_allclose(cache.read("features/mediapipe")[valid].mean(0), 0, atol=1e-5)
    assert cache.manifest.meta["features"]["mediapipe"]["relative"] == "capture"
    assert not list(cache.root.rglob("*.tmp")) and not (cache.root / ".shards").exists()


def test_stage_errors_are_clean(tiny_cache: CaptureCache, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("AVATAR_LIGHTNING_DECA", raising=False)
    root = str(tiny_cache.root)
    assert main(["features", "--cache", str(tmp_path / "absent"), "--extractor", "mediapipe"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["features", "--cache", root, "--extractor", "mediapipe", "--camera", "side"]) == 2
    assert "no camera 'side'" in capsys.readouterr().err
    assert main(["features", "--cache", root, "--extractor", "deca"]) == 2
    err = capsys.readouterr().err
    assert "deca_model.tar" in err and "--checkpoint" in err
    assert not CaptureCache(root).names("features/deca*")
