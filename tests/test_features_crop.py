"""Face crops: DECA's box convention, exact resampling geometry, smoothing without jitter or lag."""

from __future__ import annotations

import numpy as np
import pytest

from avatar_lightning.features.crop import (
    BOX_LANDMARKS,
    DECA_SCALE,
    KPT68_ENLARGE,
    FaceCropper,
    OneEuroFilter,
    centre_box,
    crop_square,
    landmark_box,
)
from tests.features_fixtures import blank, face_image, moving_face_frames


def test_landmark_box_follows_deca_kpt68_rule() -> None:
    landmarks = np.zeros((478, 3))
    landmarks[list(BOX_LANDMARKS), 0] = np.linspace(100, 200, len(BOX_LANDMARKS))  # width 100
    landmarks[list(BOX_LANDMARKS), 1] = np.linspace(50, 210, len(BOX_LANDMARKS))  # height 160
    cx, cy, side = landmark_box(landmarks)
    assert (cx, cy) == (150, 130)
    assert side == pytest.approx((100 + 160) / 2 * KPT68_ENLARGE * DECA_SCALE)  # bbox2point("kpt68") * 1.25


def test_crop_square_geometry() -> None:
    image = np.zeros((100, 120, 3), np.uint8)
    image[40:50, 60:70] = 255  # a 10 px square centred at (65, 45)
    out = crop_square(image, np.array([65.0, 45.0, 20.0]), 40)  # 2x zoom onto it
    ys, xs = np.nonzero(out[..., 0] > 127)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 29, 10, 29)  # the middle half, exactly
    outside = crop_square(image, np.array([-100.0, -100.0, 50.0]), 16)
    assert not outside.any()  # beyond the image: black, as DECA's warp
    shrunk = crop_square(np.full((400, 400, 3), 200, np.uint8), centre_box(400, 400), 32)  # strong shrink path
    assert shrunk.shape == (32, 32, 3) and np.abs(shrunk.astype(int) - 200).max() <= 1


def test_one_euro_removes_jitter_and_follows_motion() -> None:
    rng = np.random.default_rng(0)
    fps, n = 25.0, 100
    still = 100 + rng.normal(0, 2.0, size=(n, 1))  # a still head, noisy detections
    smooth = OneEuroFilter(fps, min_cutoff=1.0, beta=2.0)
    out = np.array([smooth(x, speed_scale=100.0) for x in still])
    assert np.diff(out[20:, 0]).std() < 0.35 * np.diff(still[20:, 0]).std()
    # A fast move (two box sides per second) is followed closely.
    smooth.reset()
    ramp = np.arange(n)[:, None] * (200.0 / fps)
    out = np.array([smooth(x, speed_scale=100.0) for x in ramp])
    assert np.abs(out[30:] - ramp[30:]).max() < 25.0  # well under a quarter of the box


def test_cropper_follows_the_face_smoothly() -> None:
    cropper = FaceCropper(size=96, fps=25.0)
    frames = moving_face_frames(12, size=192)
    crops = [cropper(frame) for frame in frames]
    assert all(c.found for c in crops) and all(c.image.shape == (96, 96, 3) for c in crops)
    boxes = np.array([c.box for c in crops])
    raw = np.array([landmark_box(c.landmarks) for c in crops])
    assert np.abs(boxes - raw).max() < 0.1 * raw[:, 2].mean()  # close to the detections
    assert boxes[:, 2].std() < 0.05 * boxes[:, 2].mean()  # a steady size
    # The face is in the middle of every crop: the crop of the crop's landmarks is centred.
    for crop in crops[::4]:
        points = (crop.landmarks[list(BOX_LANDMARKS), :2] - (crop.box[:2] - crop.box[2] / 2)) * 96 / crop.box[2]
        assert np.abs(points.mean(0) - 48).max() < 12


def test_cropper_without_a_face_holds_or_centres() -> None:
    cropper = FaceCropper(size=64)
    first = cropper(blank(120))
    assert not first.found and np.allclose(first.box, centre_box(120, 120))
    seen = cropper(face_image(120))
    lost = cropper(blank(120))
    assert seen.found and not lost.found and np.allclose(lost.box, seen.box)  # the last box is kept
    cropper.reset()
    assert np.allclose(cropper(blank(120)).box, centre_box(120, 120))
