"""The transfer metric: expression measures on landmarks, series scores that cannot be fooled, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_lightning.cache import CacheError
from avatar_lightning.cli import main as cli_main
from avatar_lightning.evaluation.expression_measures import MEASURES, expression_measures, measures_of_landmarks
from avatar_lightning.evaluation.transfer_score import mesh_measures, score_measures
from avatar_lightning.video import iter_frames, write_video

M = {name: i for i, name in enumerate(MEASURES)}


def _reference() -> np.ndarray:
    from avatar_lightning.features.mediapipe_landmarks import reference_landmarks

    return reference_landmarks().copy()


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_measures_are_exact_ratios_of_landmark_distances() -> None:
    points = _reference()
    iod = np.linalg.norm(points[33] - points[263])
    opened = points.copy()
    opened[14, 1] += 0.1 * iod  # the inner lower lip drops by a tenth of the eye-corner distance
    before, after = expression_measures(np.stack([points, opened]))
    gap = np.linalg.norm(points[13] - points[14])
    assert after[M["mouth_open"]] == pytest.approx(np.linalg.norm(opened[13] - opened[14]) / iod)
    assert after[M["mouth_open"]] - before[M["mouth_open"]] == pytest.approx(
        (np.linalg.norm(opened[13] - opened[14]) - gap) / iod)
    raised = points.copy()
    raised[[300, 293, 334, 296, 336], 1] -= 0.05 * iod  # the left brow goes up (y is down)
    delta = expression_measures(raised[None])[0] - before
    assert delta[M["brow_raise_left"]] == pytest.approx(0.05)
    assert delta[M["brow_raise_right"]] == pytest.approx(0.0, abs=1e-12)
    asymmetric = points.copy()
    asymmetric[291, 1] -= 0.04 * iod  # only the left mouth corner rises
    delta = expression_measures(asymmetric[None])[0] - before
    assert delta[M["smile_asymmetry"]] > 0 and delta[M["smile"]] > 0


def test_measures_ignore_head_pose_scale_and_position() -> None:
    rng = np.random.default_rng(0)
    base = _reference() * 120 + np.array([250.0, 260.0, 0.0])  # a face in pixels
    moved = []
    for _ in range(4):
        rotation = _random_rotation(rng) if not moved else np.eye(3)
        moved.append(rng.uniform(0.5, 2.0) * base @ rotation.T + rng.uniform(-50, 50, 3))
    measures = measures_of_landmarks(np.stack([base, *moved]))
    np.testing.assert_allclose(measures[1:], np.broadcast_to(measures[0], measures[1:].shape), atol=1e-9)


def test_faceless_rows_are_nan_and_bad_shapes_are_refused() -> None:
    points = np.stack([_reference(), np.zeros((478, 3))])
    measures = measures_of_landmarks(points, np.array([True, False]))
    assert np.isfinite(measures[0]).all() and np.isnan(measures[1]).all()
    with pytest.raises(ValueError, match="landmarks must be"):
        expression_measures(np.zeros((2, 100, 3)))


def test_mesh_measures_follow_the_blend_shapes_they_name() -> None:
    from avatar_lightning.render.mesh import Mesh
    from avatar_lightning.synth.blendshapes import BLEND_SHAPE_NAMES, build_blend_basis
    from avatar_lightning.synth.face import astronaut_photo, build_face_template

    template = build_face_template(astronaut_photo())
    basis = build_blend_basis(template)
    mesh = Mesh(torch.from_numpy(template.vertices).float(), torch.from_numpy(template.triangles),
                torch.from_numpy(template.uvs).float(), torch.from_numpy(template.uv_triangles),
                torch.from_numpy(basis).float())
    k = {name: i for i, name in enumerate(BLEND_SHAPE_NAMES)}
    weights = np.zeros((2, len(BLEND_SHAPE_NAMES)), np.float32)
    rest = mesh_measures(mesh, weights[:1])[0]
    for shape, measure, sign in (("jaw_open", "mouth_open", 1), ("blink_left", "eye_open_left", -1),
                                 ("blink_right", "eye_open_right", -1), ("brow_up_left", "brow_raise_left", 1),
                                 ("smile_left", "smile_asymmetry", 1), ("smile_right", "smile", 1),
                                 ("pucker", "lip_pucker", 1)):
        w = np.zeros((1, len(BLEND_SHAPE_NAMES)), np.float32)
        w[0, k[shape]] = 1.0
        change = mesh_measures(mesh, w)[0] - rest
        assert sign * change[M[measure]] > 0.01, (shape, measure, change[M[measure]])


def _series(n: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 25
    return np.stack([np.sin(2 * np.pi * t / rng.uniform(0.8, 3)) + 0.3 * np.sin(2 * np.pi * t / rng.uniform(0.3, 0.6)
                     + rng.uniform(0, 6)) for _ in MEASURES], 1)


def test_a_perfect_avatar_scores_one_whatever_its_range() -> None:
    driver = _series()
    score = score_measures(driver, 0.3 * driver + 5.0, 25.0)  # smaller range, another face: still perfect
    summary = score.summary()
    assert summary["mean_pearson"] == pytest.approx(1.0)
    assert summary["jitter_ratio"] == pytest.approx(1.0)
    assert all(m.mae == pytest.approx(0.0, abs=1e-9) and m.best_lag == 0 for m in score.measures.values())
    assert summary["face_fraction"] == 1.0


def test_a_frozen_avatar_scores_zero() -> None:
    driver = _series()
    score = score_measures(driver, np.ones_like(driver), 25.0)
    assert all(m.pearson is None for m in score.measures.values())
    assert score.summary()["mean_pearson"] == 0.0 and score.summary()["min_pearson"] == 0.0
    assert json.dumps(score.to_json())  # n/a is null, not NaN


def test_amplitude_sees_a_damped_an_exaggerated_and_a_frozen_avatar() -> None:
    """Standardised correlation cannot tell a 20 % copy from a perfect one; the amplitude ratio can."""
    driver = _series()
    for gain in (0.2, 1.0, 2.0):
        score = score_measures(driver, gain * (driver - driver.mean(0)) + 3.0, 25.0)
        assert score.mean_pearson() == pytest.approx(1.0)
        assert all(m.amplitude == pytest.approx(gain) for m in score.measures.values())
        assert score.summary()["amplitude"] == pytest.approx(gain)
        assert score.summary()["mouth_open_amplitude"] == pytest.approx(gain)
    frozen = score_measures(driver, np.ones_like(driver), 25.0)
    assert frozen.summary()["amplitude"] == 0.0 and frozen.summary()["mouth_open_amplitude"] == 0.0
    still_driver = score_measures(np.ones_like(driver), driver, 25.0)  # nothing to copy: n/a, not a ratio
    assert all(m.amplitude is None for m in still_driver.measures.values())
    assert json.loads(json.dumps(still_driver.to_json()))["summary"]["amplitude"] is None
    late = score_measures(driver, np.roll(driver, 6, axis=0), 25.0)
    assert late.summary()["amplitude"] == pytest.approx(1.0, abs=0.02)  # late, but as lively


def test_a_late_avatar_scores_lower_and_its_lag_is_found() -> None:
    driver = _series(400)
    late = np.roll(driver, 6, axis=0)
    score = score_measures(driver, late, 25.0)
    assert score.mean_pearson() < 0.9
    assert all(m.best_lag == 6 for m in score.measures.values())


def test_jitter_and_unrelated_motion_are_seen() -> None:
    driver = _series()
    rng = np.random.default_rng(1)
    noisy = driver + 0.3 * rng.normal(size=driver.shape)
    assert score_measures(driver, noisy, 25.0).jitter_ratio > 3
    smooth = np.stack([np.convolve(c, np.ones(9) / 9, mode="same") for c in driver.T], 1)
    assert score_measures(driver, smooth, 25.0).jitter_ratio < 0.8
    unrelated = score_measures(driver, _series(seed=7), 25.0)
    assert abs(unrelated.mean_pearson()) < 0.3
    assert np.mean([m.mae for m in unrelated.measures.values()]) > 0.6


def test_only_frames_with_a_face_in_both_count() -> None:
    driver, avatar = _series(), _series()
    avatar[::2] = np.nan
    score = score_measures(driver, avatar, 25.0)
    assert score.frames_scored == len(driver) // 2 and score.face_fraction == pytest.approx(0.5)
    score = score_measures(driver, np.full_like(driver, np.nan), 25.0)
    assert score.frames_scored == 0 and score.summary()["mean_pearson"] == 0.0
    with pytest.raises(ValueError, match="measure series"):
        score_measures(driver[:, :3], avatar, 25.0)


@pytest.fixture
def driving_clip(shared_dir: Path) -> Path:
    return shared_dir / "data" / "driving" / "d0.mp4"


def test_score_transfer_command_on_a_real_clip(driving_clip: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Itself ~1; its first frame held ~0 (n/a); a copy 5 frames late lower; side-by-side regions work."""
    frames = np.stack(list(iter_frames(driving_clip)))
    write_video(tmp_path / "frozen.mp4", np.repeat(frames[:1], len(frames), 0), 25.0)
    write_video(tmp_path / "late.mp4", np.concatenate([np.repeat(frames[:1], 5, 0), frames[:-5]]), 25.0)
    write_video(tmp_path / "pair.mp4", np.concatenate([frames, frames], axis=2), 25.0)
    results = {}
    for name, avatar in (("self", str(tmp_path / "pair.mp4") + "@512,0,512,512"), ("frozen", tmp_path / "frozen.mp4"),
                         ("late", tmp_path / "late.mp4")):
        assert cli_main(["score-transfer", "--driving", str(driving_clip), "--avatar-video", str(avatar),
                         "--out", str(tmp_path / name), "--no-progress"]) == 0
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())["summary"]
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert results["self"]["mean_pearson"] > 0.97  # H.264 re-encoding moves landmarks a little
    assert abs(results["frozen"]["mean_pearson"]) < 0.2
    assert results["late"]["mean_pearson"] < results["self"]["mean_pearson"] - 0.1
    assert results["self"]["amplitude"] == pytest.approx(1.0, abs=0.1) and results["frozen"]["amplitude"] < 0.1
    assert "mouth_open" in capsys.readouterr().out


def test_score_transfer_refuses_bad_input(driving_clip: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (20, 64, 64, 3), dtype=np.uint8)
    write_video(tmp_path / "noise.mp4", noise, 25.0)
    write_video(tmp_path / "other_rate.mp4", noise, 30.0)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    cases = {
        "missing": (str(tmp_path / "nope.mp4"), str(driving_clip), "no such video"),
        "broken": (str(driving_clip), str(tmp_path / "broken.mp4"), "broken.mp4"),
        "faceless driver": (str(tmp_path / "noise.mp4"), str(tmp_path / "noise.mp4"), "no face"),
        "frame rate": (str(driving_clip), str(tmp_path / "other_rate.mp4"), "fps"),
    }
    for label, (driving, avatar, message) in cases.items():
        code = cli_main(["score-transfer", "--driving", driving, "--avatar-video", avatar,
                         "--out", str(tmp_path / label), "--no-progress"])
        err = capsys.readouterr().err
        assert code != 0 and message in err, (label, err)
        assert "Traceback" not in err and not (tmp_path / f"{label}.json").exists()
    with pytest.raises(CacheError):
        from avatar_lightning.evaluation.transfer_score import score_videos

        score_videos(str(tmp_path / "nope.mp4"), str(driving_clip))


def test_grid_scoring_names_missing_drivers(tmp_path: Path) -> None:
    from avatar_lightning.evaluation.transfer_grid import DrivingClips

    with pytest.raises(CacheError, match="driving video.*not found.*nope.mp4"):
        DrivingClips([tmp_path / "nope.mp4"], tmp_path / "work")
