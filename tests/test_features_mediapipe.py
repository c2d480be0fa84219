"""The ``mediapipe`` extractor: faces found, rigid motion removed, expression kept, faceless frames flagged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar_lightning.cache import CaptureCache
from avatar_lightning.features import build_extractor
from avatar_lightning.features.mediapipe_landmarks import (
    FEATURE_DIM,
    RIGID_LANDMARKS,
    FaceMeshTracker,
    MediaPipeLandmarks,
    reference_landmarks,
    similarity_align,
)
from tests.features_fixtures import blank, face_image, open_mouth, rotate_scale


def _photo_extractor() -> MediaPipeLandmarks:
    extractor = build_extractor("mediapipe")
    extractor.tracker.static = True  # unrelated photos: detect each one afresh
    return extractor


def _features(extractor: MediaPipeLandmarks, image: np.ndarray) -> np.ndarray:
    values, valid = extractor.extract(image)
    assert valid.all(), "no face found"
    return values["mediapipe"][0]


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).mean()))


def test_similarity_align_removes_rotation_scale_translation() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((478, 3))
    angle = 0.4
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    moved = 2.5 * reference @ rotation.T + np.array([3.0, -1.0, 7.0])
    np.testing.assert_allclose(similarity_align(moved[None], reference)[0], reference, atol=1e-9)
    mirrored = reference * np.array([-1.0, 1.0, 1.0])  # a reflection is not a rotation: not undone
    assert np.abs(similarity_align(mirrored[None], reference)[0] - reference).max() > 0.1


def test_reference_is_frontal_and_normalised() -> None:
    reference = reference_landmarks()
    rigid = reference[list(RIGID_LANDMARKS)]
    np.testing.assert_allclose(rigid.mean(0), 0, atol=1e-9)
    assert np.sqrt((rigid**2).sum(1).mean()) == pytest.approx(1.0)
    assert reference[263, 0] > reference[33, 0]  # the face's left eye is to the image right
    assert reference[152, 1] > reference[10, 1]  # chin below forehead
    assert reference[1, 2] < reference[234, 2]  # nose tip nearer the camera than the cheek's side


def test_finds_the_face_and_the_layout() -> None:
    extractor = _photo_extractor()
    assert [(o.name, o.dim) for o in extractor.outputs] == [("mediapipe", FEATURE_DIM)]
    values, valid = extractor.extract(np.stack([face_image(192), face_image(192)]))
    assert valid.tolist() == [True, True] and values["mediapipe"].shape == (2, 1434)
    assert values["mediapipe"].dtype == np.float32
    # The same face at another resolution: the same features (scale is removed).
    assert _rms(values["mediapipe"][0], _features(extractor, face_image(256))) < 0.01
    points = values["mediapipe"][0].reshape(478, 3)  # column 3i + c = coordinate c of landmark i
    assert _rms(points[list(RIGID_LANDMARKS)], reference_landmarks()[list(RIGID_LANDMARKS)]) < 0.05


def test_little_change_under_rigid_motion_clear_change_with_expression() -> None:
    extractor = _photo_extractor()
    face = face_image(192)
    neutral = _features(extractor, face)
    rigid = [_rms(neutral, _features(extractor, rotate_scale(face, a, s, shift)))
             for a, s, shift in [(12, 1.0, (0, 0)), (-10, 0.85, (6, -4)), (6, 1.15, (-5, 3))]]
    landmarks = FaceMeshTracker(static=True)(face)
    assert landmarks is not None
    mouth, width = landmarks[[13, 14], :2].mean(0), landmarks[454, 0] - landmarks[234, 0]
    opened = [_rms(neutral, _features(extractor, open_mouth(face, mouth, amount, 0.5 * width))) for amount in (8, 12)]
    assert max(rigid) < 0.03, rigid
    assert min(opened) > 2.5 * max(rigid), (rigid, opened)
    assert opened[1] > opened[0]  # a wider mouth moves further from the neutral face
    # The change is in the lower face (lower lip, chin), not in the rigid points.
    diff = np.linalg.norm((_features(extractor, open_mouth(face, mouth, 12, 0.5 * width)) - neutral).reshape(478, 3),
                          axis=1)
    assert diff[[14, 17, 152]].mean() > 5 * diff[list(RIGID_LANDMARKS)].mean()


def test_frames_without_a_face_are_flagged_not_fatal() -> None:
    extractor = build_extractor("mediapipe")
    frames = np.stack([face_image(160), blank(160), np.zeros((160, 160, 3), np.uint8), face_image(160)])
    values, valid = extractor.extract(frames)
    assert valid.tolist() == [True, False, False, True]
    assert np.isfinite(values["mediapipe"]).all()
    assert not values["mediapipe"][1:3].any()
    assert extractor.extract(np.zeros((1, 7, 5, 3), np.uint8))[1].tolist() == [False]  # tiny frame: no crash


def test_tracker_survives_pickling() -> None:
    import pickle

    extractor = build_extractor("mediapipe")
    assert extractor.extract(face_image(128))[1].all()
    clone = pickle.loads(pickle.dumps(extractor))  # DDP spawn / DataLoader workers pickle modules
    assert clone.tracker._mesh is None
    assert clone.extract(face_image(128))[1].all()


def test_synthetic_actor_faces_are_found(synthetic_tiny: CaptureCache) -> None:
    frames = synthetic_tiny.read("cameras/frontal/frames", 0, 40)  # (40, 64, 64, 3)
    extractor = build_extractor("mediapipe")
    values, valid = extractor.extract(frames)
    assert valid.mean() >= 0.9, valid
    assert np.isfinite(values["mediapipe"]).all()


@pytest.mark.shared
def test_driving_clip_mouth_open_vs_closed(shared_dir: Path) -> None:
    from avatar_lightning.video import iter_frames

    # d0.mp4: frames ~0-17 mouth closed, ~18-66 wide open (a real person, head moving).
    frames = [f for i, f in enumerate(iter_frames(shared_dir / "data" / "driving" / "d0.mp4")) if i in (2, 10, 45)]
    extractor = build_extractor("mediapipe")
    values, valid = extractor.extract(np.stack(frames))
    assert valid.all()
    closed_a, closed_b, opened = values["mediapipe"]
    assert _rms(closed_a, opened) > 3 * _rms(closed_a, closed_b)


@pytest.mark.shared
def test_portraits_of_different_people(shared_dir: Path) -> None:
    import cv2

    extractor = _photo_extractor()
    for path in sorted((shared_dir / "data" / "faces").glob("*.jpg"))[:3]:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        values, valid = extractor.extract(image)
        assert valid.all(), path.name
