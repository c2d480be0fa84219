"""The capture stage's parts on their own: sources, split, the tracking solver, clean plates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_lightning.cache import CacheError
from avatar_lightning.capture.clean_plate import estimate_plate, head_mask, load_plate
from avatar_lightning.capture.fitting import HeadTracker, RigCameras, initial_pose, solve_block_tridiagonal
from avatar_lightning.capture.sources import CameraSource, probe_capture
from avatar_lightning.capture.split import time_split
from avatar_lightning.features.mediapipe_landmarks import RIGID_LANDMARKS
from avatar_lightning.render import Cameras
from avatar_lightning.video import write_video


# ---------------------------------------------------------------------------------------------- sources, split
def test_camera_source_parses_regions() -> None:
    assert CameraSource.parse("a/b.mp4") == CameraSource(Path("a/b.mp4"))
    assert CameraSource.parse("grid@x.mp4@0,360,247,360") == CameraSource(Path("grid@x.mp4"), (0, 360, 247, 360))
    with pytest.raises(CacheError, match="positive"):
        CameraSource.parse("v.mp4@0,0,0,10")


def _video(path: Path, frames: int, fps: float = 25.0, size: int = 32) -> Path:
    rng = np.random.default_rng(frames)
    return write_video(path, rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8), fps)


def test_cameras_of_different_length_or_rate_are_refused_by_name(tmp_path: Path) -> None:
    a, b = _video(tmp_path / "a.mp4", 10), _video(tmp_path / "b.mp4", 12)
    with pytest.raises(CacheError, match=r"b\.mp4.*12 frames"):
        probe_capture([CameraSource(a), CameraSource(b)])
    c = _video(tmp_path / "c.mp4", 10, fps=30.0)
    with pytest.raises(CacheError, match="frame rate"):
        probe_capture([CameraSource(a), CameraSource(c)])
    with pytest.raises(CacheError, match="outside"):
        probe_capture([CameraSource(a, (16, 16, 20, 20))])
    info = probe_capture([CameraSource(a, (0, 0, 16, 8)), CameraSource(a, (16, 8, 16, 8))])
    assert info.num_frames == 10 and info.sizes == ((16, 8), (16, 8))


def test_split_keeps_the_papers_tail_and_refuses_short_clips() -> None:
    long = time_split(25 * 180, 25.0)
    assert [(s.name, s.split, s.num_frames) for s in long] == [
        ("train", "train", 25 * 140), ("val", "val", 250), ("test", "test", 750)]
    short = time_split(1779, 25.0)  # the 71 s anchor: fractions
    assert short[-1].num_frames == round(0.2 * 1779) and short[-1].last == 1778
    assert time_split(100, 25.0, test_seconds=1, val_seconds=0.4)[0].num_frames == 65
    with pytest.raises(CacheError, match="too short"):
        time_split(40, 25.0, test_seconds=1.0, val_seconds=0.5)


# ---------------------------------------------------------------------------------------------- tracking
def _toy_face(rng: np.random.Generator, vertices: int = 468, shapes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A face-sized point cloud (an ellipsoid cap ~15 cm wide) and a random smooth-ish blend basis."""
    u, v = rng.uniform(-1, 1, vertices), rng.uniform(-1, 1, vertices)
    points = np.stack([0.07 * u, 0.09 * v, -0.09 + 0.03 * (u**2 + v**2)], 1)
    basis = rng.normal(0, 0.004, (shapes, vertices, 3))
    return points, basis


def _rig(num: int = 2) -> RigCameras:
    cams = Cameras.look_at([[0.0, 0.0, -1.0], [0.5, 0.0, -0.87]][:num], [0, 0, 0], width=256, height=256,
                           focal=600.0, dtype=torch.float64)
    return RigCameras(cams.K, cams.R, cams.t)


def test_analytic_jacobian_matches_autodiff() -> None:
    rng = np.random.default_rng(0)
    points, basis = _toy_face(rng)
    tracker = HeadTracker(points, basis, _rig())
    theta = torch.tensor(rng.normal(0, 0.2, (3, 10)), dtype=torch.float64)
    target = torch.zeros(3, 2, 468, 2, dtype=torch.float64)
    scale = torch.full((3, 2), 120.0, dtype=torch.float64)
    _, analytic = tracker.residuals(theta, target, scale)

    def single(t: torch.Tensor) -> torch.Tensor:  # the residual from the forward model alone
        return ((tracker.landmarks_of(t) - target[0]) / scale[0][:, None, None]).reshape(-1)

    numeric = torch.stack([torch.func.jacfwd(single)(row) for row in theta])
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_block_tridiagonal_solve_matches_dense() -> None:
    rng = np.random.default_rng(1)
    b, p = 5, 4
    a = rng.normal(size=(b, p, p))
    blocks = a @ a.transpose(0, 2, 1) + 3 * np.eye(p)
    off = -rng.uniform(0.1, 0.5, p)
    rhs = rng.normal(size=(b, p))
    dense = np.zeros((b * p, b * p))
    for i in range(b):
        dense[i * p : (i + 1) * p, i * p : (i + 1) * p] = blocks[i] + 0.01 * np.diag(np.diag(blocks[i]))
        if i + 1 < b:
            dense[i * p : (i + 1) * p, (i + 1) * p : (i + 2) * p] = np.diag(off)
            dense[(i + 1) * p : (i + 2) * p, i * p : (i + 1) * p] = np.diag(off)
    np.testing.assert_allclose(solve_block_tridiagonal(blocks, off, rhs, 0.01).reshape(-1),
                               np.linalg.solve(dense, rhs.reshape(-1)), rtol=1e-8)


def test_tracker_recovers_known_pose_and_weights_despite_outliers() -> None:
    rng = np.random.default_rng(2)
    points, basis = _toy_face(rng)
    rig = _rig()
    tracker = HeadTracker(points, basis, rig)
    n = 40
    t = np.linspace(0, 1, n)
    true = np.zeros((n, 10))
    true[:, 1] = 0.3 * np.sin(2 * np.pi * t)  # yaw +-17 degrees
    true[:, 0] = 0.1 * np.cos(2 * np.pi * t)
    true[:, 3:6] = [0.01, -0.005, 0.02]
    true[:, 6:] = np.clip(0.5 + 0.5 * np.sin(2 * np.pi * (t[:, None] + np.arange(4) / 4)), 0, 1)
    pixels = tracker.landmarks_of(torch.tensor(true)).numpy()  # (N, C, V, 2)
    pixels = pixels + rng.normal(0, 0.3, pixels.shape)
    bad = rng.random(pixels.shape[:3]) < 0.05
    pixels[bad] += 25.0  # FaceMesh slips on a few landmarks
    landmarks = np.concatenate([pixels, np.zeros((*pixels.shape[:3], 1))], -1)
    seen = np.ones((n, 2), bool)
    seen[10:14, 1] = False  # the second camera loses the face for a moment
    landmarks[10:14, 1] = np.nan
    result = tracker.fit(lambda a, b: (landmarks[a:b], seen[a:b]), n, np.zeros((n, 6)))
    rot_err = np.degrees(np.linalg.norm(result.pose[:, :3] - true[:, :3], axis=1))
    assert np.median(rot_err) < 0.5
    assert np.abs(result.pose[:, 3:] - true[:, 3:6]).max() < 0.005
    assert np.abs(result.blend_weights - true[:, 6:]).mean() < 0.05
    assert ((result.blend_weights >= 0) & (result.blend_weights <= 1)).all()
    assert np.isnan(result.rms[10:14, 1]).all() and np.isfinite(result.rms[:, 0]).all()


def test_initial_pose_is_close_to_the_truth_under_weak_perspective() -> None:
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(3)
    points, _ = _toy_face(rng)
    K = np.array([[3000.0, 0, 128], [0, 3000.0, 128], [0, 0, 1]])
    rot = Rotation.from_euler("YXZ", [0.3, -0.1, 0.05])
    cam_points = rot.apply(points) + [0.01, 0.02, 5.0]
    uv = cam_points @ K.T
    uv = uv[:, :2] / uv[:, 2:]
    z = (cam_points[:, 2] - cam_points[:, 2].mean()) * K[0, 0] / 5.0
    pose = initial_pose(np.c_[uv, z][None], points, K, np.eye(3), np.zeros(3))[0]
    assert np.degrees((Rotation.from_rotvec(pose[:3]) * rot.inv()).magnitude()) < 1.0
    assert abs(pose[5] - 5.0) < 0.1


# ---------------------------------------------------------------------------------------------- clean plates
def test_clean_plate_is_the_background_behind_a_moving_head() -> None:
    rng = np.random.default_rng(5)
    background = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    frames, masks = [], []
    for x in range(10, 50, 4):  # a head (a grey square) crossing the frame
        frame = background.copy()
        frame[10:25, x - 5 : x + 5] = 128
        mask = np.zeros((40, 60), bool)
        mask[8:27, x - 7 : x + 7] = True
        frames.append(frame)
        masks.append(mask)
    estimate = estimate_plate(np.stack(frames), np.stack(masks))
    assert estimate.unseen_fraction == 0
    np.testing.assert_array_equal(estimate.plate, background)
    still = estimate_plate(np.stack(frames[:1] * 3), np.stack(masks[:1] * 3))  # never moves: inpainted, reported
    assert still.unseen_fraction == pytest.approx(masks[0].mean())


def test_clean_plate_keeps_a_still_torso_and_says_what_the_head_hid() -> None:
    """A monocular clip: the torso under the chin never moves (background, however often the neck mask hides it);
    the head sways a little, so the strip it always covers was never seen: inpainted and reported."""
    rng = np.random.default_rng(6)
    background = rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)
    torso = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)  # a patterned shirt and tie, held still
    frames, masks, heads = [], [], []
    for k in range(12):
        frame = background.copy()
        frame[40:60, 15:45] = torso
        x = 28 + (k % 3)  # the head sways by two pixels
        frame[8:34, x - 8 : x + 8] = rng.integers(90, 200, (26, 16, 3))  # a face that keeps changing
        head = np.zeros((60, 60), bool)
        head[6:36, x - 10 : x + 10] = True
        mask = head.copy()
        mask[36:60, 12:48] = True  # the neck extension reaches over the torso
        frames.append(frame)
        masks.append(mask)
        heads.append(head)
    estimate = estimate_plate(np.stack(frames), np.stack(masks), np.stack(heads))
    np.testing.assert_array_equal(estimate.plate[40:60, 15:45], torso)  # the torso, as itself
    assert estimate.static_fraction > 0
    hidden = np.stack(heads).all(0)
    assert estimate.unseen_fraction == pytest.approx(hidden.mean())  # only what the head always covered
    before = estimate_plate(np.stack(frames), np.stack(masks))  # without the distinction: an inpainted patch
    assert not np.array_equal(before.plate[40:60, 15:45], torso) and before.unseen_fraction > estimate.unseen_fraction


def test_head_mask_covers_the_face_and_more() -> None:
    face = np.array([[20.0, 20], [40, 20], [40, 45], [20, 45]])
    mask = head_mask(face, 80, 100)
    assert mask[20:45, 20:40].all() and mask.sum() > 2 * 20 * 25 and not mask[:, :5].any()
    without_neck = head_mask(face, 80, 100, neck=False)
    assert (without_neck <= mask).all() and mask[55:, :].any() and not without_neck[55:, :].any()


def test_bad_clean_plate_files(tmp_path: Path) -> None:
    import cv2

    with pytest.raises(CacheError, match="does not exist"):
        load_plate(tmp_path / "none.png", 8, 8)
    (tmp_path / "bad.png").write_text("nope")
    with pytest.raises(CacheError, match="not a readable image"):
        load_plate(tmp_path / "bad.png", 8, 8)
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(CacheError, match="4x4 but its camera"):
        load_plate(tmp_path / "small.png", 8, 8)


def test_rigid_landmarks_are_mesh_points() -> None:
    assert max(RIGID_LANDMARKS) < 468


def test_a_scaled_camera_projects_to_the_scaled_pixels() -> None:
    from avatar_lightning.cache import CameraRecord
    from avatar_lightning.capture.calibration import scaled_camera
    from avatar_lightning.capture.sources import fit_within

    assert fit_within(3840, 2160, 1024) == (1024, 576) and fit_within(512, 512, 1024) == (512, 512)
    assert fit_within(3840, 2160, None) == (3840, 2160)
    K = [[3000.0, 0.0, 1920.5], [0.0, 3010.0, 1080.5], [0.0, 0.0, 1.0]]
    full = CameraRecord("c", K, np.eye(3).tolist(), [0.0, 0.0, 1.5], 3840, 2160)
    small = scaled_camera(full, (1024, 576))
    points = torch.tensor([[0.1, -0.05, 0.2], [-0.2, 0.1, 0.0], [0.0, 0.0, 0.3]])
    at_full = Cameras.from_dict(full).project_to_pixels(points[None])[0][0]
    at_small = Cameras.from_dict(small).project_to_pixels(points[None])[0][0]
    scale = torch.tensor([1024 / 3840, 576 / 2160])
    torch.testing.assert_close(at_small, at_full * scale, rtol=1e-5, atol=1e-3)
    assert (small.width, small.height) == (1024, 576)


def test_big_frames_are_scaled_down_and_a_full_size_plate_with_them(tmp_path: Path) -> None:
    import cv2

    from avatar_lightning.capture.sources import iter_capture

    frames = np.random.default_rng(0).integers(0, 255, (3, 90, 160, 3), dtype=np.uint8)
    video = write_video(tmp_path / "wide.mp4", frames, 25.0)
    info = probe_capture([CameraSource.parse(str(video))], max_side=64)
    assert info.sizes == ((64, 36),) and info.original_sizes == ((160, 90),)
    views = [v[0] for v in iter_capture(info)]
    assert len(views) == 3 and views[0].shape == (36, 64, 3)
    assert probe_capture([CameraSource.parse(str(video))]).sizes == ((160, 90),)  # no max_side: as the file is
    cv2.imwrite(str(tmp_path / "plate.png"), frames[0][..., ::-1])
    assert load_plate(tmp_path / "plate.png", 64, 36).shape == (36, 64, 3)  # the file's size, scaled alike
    cv2.imwrite(str(tmp_path / "square.png"), np.zeros((90, 90, 3), np.uint8))
    with pytest.raises(CacheError, match="90x90 but its camera"):
        load_plate(tmp_path / "square.png", 64, 36)  # another aspect is another camera
