"""Identity distance (dlib's face-recognition ResNet): the same face 0, a warped copy close, another person far,
no face n/a, missing model files a clear error."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from avatar_lightning.evaluation.identity import (
    SAME_PERSON,
    FaceEmbedder,
    IdentityUnavailable,
    identity_scores,
)
from tests.features_fixtures import blank, face_image, rotate_scale


@pytest.fixture(scope="module")
def embedder() -> FaceEmbedder:
    return FaceEmbedder()


def test_the_same_face_is_zero_a_warped_copy_close_and_no_face_is_none(embedder: FaceEmbedder) -> None:
    face = face_image(256)
    e = embedder(face)
    assert e is not None and e.shape == (128,)
    assert np.linalg.norm(embedder(face.copy()) - e) == pytest.approx(0.0, abs=1e-6)
    warped = embedder(rotate_scale(face, 8.0, 0.9, (6, -4)))
    assert warped is not None and np.linalg.norm(warped - e) < 0.3  # pose and scale are not identity
    assert embedder(blank(256)) is None
    with pytest.raises(ValueError, match="uint8"):
        embedder(face.astype(np.float32))


def test_other_people_are_far(embedder: FaceEmbedder, shared_dir: Path) -> None:
    anchor = embedder(face_image(256))
    portraits = sorted((shared_dir / "data" / "faces").glob("*.jpg"))
    distances = []
    for path in portraits:
        found = embedder(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
        if found is not None:
            distances.append(float(np.linalg.norm(found - anchor)))
    assert len(distances) >= 4 and min(distances) > SAME_PERSON, distances


def test_identity_scores_pair_frames_and_give_the_real_spread() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(6, 128))
    avatar = real + 0.1 * np.eye(6, 128)  # each frame 0.1 off, along its own axis
    avatar[2] = np.nan  # no face in the avatar's frame 2
    score = identity_scores(real, avatar)
    assert score.distance == pytest.approx(0.1) and score.frames_scored == 5 and score.frames == 6
    gaps = [np.linalg.norm(real[i] - real[j]) for i in range(6) for j in range(i + 1, 6)]
    assert score.real_spread == pytest.approx(np.mean(gaps))
    none = identity_scores(real, np.full_like(real, np.nan))
    assert none.distance is None and none.frames_scored == 0 and none.to_json()["distance"] is None
    with pytest.raises(ValueError, match="one shape"):
        identity_scores(real, real[:3])


def test_missing_model_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(IdentityUnavailable, match="shape_predictor_5_face_landmarks.dat.*tasks.py setup"):
        FaceEmbedder(models=tmp_path)
