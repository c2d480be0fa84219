"""``tracked_blend``: a person's own blend weights, fitted from landmarks, recovered on constructed faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar_lightning.cache import CacheError, SequenceRecord
from avatar_lightning.features.tracked_blend import fit_blend_weights
from avatar_lightning.synth.blendshapes import BLEND_SHAPE_NAMES

K = {name: i for i, name in enumerate(BLEND_SHAPE_NAMES)}


def _performance(n: int = 60) -> np.ndarray:
    weights = np.zeros((n, len(BLEND_SHAPE_NAMES)))
    t = np.arange(n - 20)
    weights[20:, K["jaw_open"]] = 0.5 * (1 - np.cos(2 * np.pi * t / 20)) * 0.6
    weights[20:, K["blink_left"]] = (np.sin(2 * np.pi * t / 13) > 0.6) * 0.9
    weights[20:, K["smile_right"]] = np.clip(np.sin(2 * np.pi * t / 31), 0, None) * 0.7
    return weights


def _landmarks_of(weights: np.ndarray, size: int = 512) -> np.ndarray:
    """Pixel landmarks (N, 478, 3) of the astronaut's face performing ``weights``, seen by a pinhole camera."""
    from avatar_lightning.capture.template import build_actor_template
    from avatar_lightning.synth.face import astronaut_photo

    neutral = astronaut_photo().landmarks
    actor = build_actor_template(np.repeat(neutral[None], 3, axis=0))
    vertices = actor.template.vertices[None] + np.einsum("nk,kvc->nvc", weights, actor.blend_basis)
    vertices = vertices - vertices[:, :468].mean(1, keepdims=True) + np.array([0.0, 0.0, 0.6])
    focal = 1.5 * size
    x = focal * vertices[..., 0] / vertices[..., 2] + size / 2
    y = focal * vertices[..., 1] / vertices[..., 2] + size / 2
    z = focal * (vertices[..., 2] - 0.6) / 0.6
    points = np.stack([x, y, z], -1)
    iris = np.repeat(points[:, 468:470], 5, axis=1)  # the eye centres stand in for the 10 iris points
    return np.concatenate([points[:, :468], iris], axis=1)


def test_fit_recovers_the_weights_a_face_performed() -> None:
    weights = _performance()
    landmarks = _landmarks_of(weights)
    fitted, report = fit_blend_weights(landmarks, np.ones(len(landmarks), bool), 512, 512)
    assert fitted.shape == weights.shape and fitted.dtype == np.float32
    for shape in ("jaw_open", "blink_left", "smile_right"):
        r = np.corrcoef(fitted[:, K[shape]], weights[:, K[shape]])[0, 1]
        assert r > 0.9, (shape, r)
    assert np.abs(fitted[:20]).max() < 0.15  # the neutral frames stay neutral
    assert report["median_reprojection_fraction"] < 0.02


def test_no_face_is_a_clear_error() -> None:
    with pytest.raises(CacheError, match="no face"):
        fit_blend_weights(np.full((5, 478, 3), np.nan), np.zeros(5, bool), 64, 64)


def test_features_stage_on_a_real_clip(shared_dir: Path, tmp_path: Path) -> None:
    """On real talking frames: the weights, put on the synthetic actor's face, move it as FaceMesh saw the driver."""
    from avatar_lightning.cache import CaptureCache
    from avatar_lightning.cli import main
    from avatar_lightning.evaluation.expression_measures import CORE_MEASURES, measures_of_landmarks
    from avatar_lightning.features.mediapipe_landmarks import track_landmarks
    from avatar_lightning.video import iter_frames
    from tests.features_fixtures import frames_cache

    frames = np.stack(list(iter_frames(shared_dir / "data" / "driving" / "d3.mp4")))[:150]
    cache = frames_cache(tmp_path / "cache", frames, [SequenceRecord("talk", 0, 149, "test")], fps=30.0)
    assert main(["features", "--cache", str(cache.root), "--extractor", "tracked_blend", "--no-progress"]) == 0
    cache = CaptureCache(cache.root)
    x = cache.read("features/tracked_blend")
    assert x.shape == (150, 17) and cache.read("features/tracked_blend.valid").all()
    assert cache.manifest.meta["features"]["tracked_blend"]["fit"]["frames_in_neutral"] > 0
    import torch

    from avatar_lightning.evaluation.transfer_score import mesh_measures, score_measures
    from avatar_lightning.render.mesh import Mesh
    from avatar_lightning.synth.blendshapes import build_blend_basis
    from avatar_lightning.synth.face import astronaut_photo, build_face_template

    template = build_face_template(astronaut_photo())
    mesh = Mesh(torch.from_numpy(template.vertices).float(), torch.from_numpy(template.triangles),
                torch.from_numpy(template.uvs).float(), torch.from_numpy(template.uv_triangles),
                torch.from_numpy(build_blend_basis(template)).float())
    landmarks, valid = track_landmarks(frames, len(frames))
    driver = measures_of_landmarks(np.nan_to_num(landmarks), valid)
    score = score_measures(driver, mesh_measures(mesh, x), 30.0)
    # 150 frames of d3 gave mean r 0.69, the first seven measures 0.77, mouth 0.91; a broken fit gives ~0
    assert score.mean_pearson() > 0.6 and score.mean_pearson(CORE_MEASURES) > 0.7, score.summary()
    assert score.measures["mouth_open"].pearson > 0.85, score.summary()
