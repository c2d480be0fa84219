"""Camera calibration for ``prepare``: the user's JSON file, and the bundle adjustment of FaceMesh landmarks.

The estimate is scored against a known rig: the synthetic scene's three cameras (yaw 0, -30, +30 deg, 1 m from
the face). FaceMesh is imitated, not run: a face-like point cloud in random head poses is projected into every
camera (x, y in pixels) with FaceMesh's relative depth z (camera depth about the face's centroid, in x's pixel
scale). z gets much more noise than x, y, as FaceMesh's depth is its least reliable coordinate; that also makes
the closed-form start (which uses z) clearly worse than the adjusted result, so the bounds below test the
adjustment, not the start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.optimize._numdiff import approx_derivative
from scipy.spatial.transform import Rotation

from avatar_lightning.cache import CacheError
from avatar_lightning.capture import bundle_adjustment as adjust
from avatar_lightning.capture import calibration as calib
from avatar_lightning.features.mediapipe_landmarks import RIGID_LANDMARKS
from avatar_lightning.render.cameras import approximate_intrinsics
from avatar_lightning.synth.scene import make_cameras

NAMES = ["front", "left", "right"]
SIZE = (256, 256)
XY_NOISE_PX, Z_NOISE_PX, OUTLIER_PX = 0.5, 5.0, 30.0


# ---------------------------------------------------------------------------------------------- loading
def _file_record(name: str = "cam", **changes: Any) -> dict[str, Any]:
    """A valid record in OpenCV conventions for a 64x48 video (principal point at the OpenCV centre)."""
    R = Rotation.from_euler("y", 20, degrees=True).as_matrix()
    record = {"name": name, "K": [[80.0, 0.0, 31.5], [0.0, 80.0, 23.5], [0.0, 0.0, 1.0]], "R": R.tolist(),
              "t": [0.1, 0.0, 1.0], "width": 64, "height": 48}
    record.update(changes)
    return record


def _write(path: Path, content: Any) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_a_valid_file_loads_in_the_project_convention(tmp_path: Path) -> None:
    dist = [0.1, -0.02, 0.001, 0.0, 0.003]
    path = _write(tmp_path / "cams.json", {"cameras": [_file_record("A", dist=dist), _file_record("B", dist=[0] * 4),
                                                       _file_record("C")]})
    loaded = calib.load_calibration(path, ["cam0", "cam1", "cam2"], [(64, 48)] * 3)
    assert not loaded.estimated
    assert [c.name for c in loaded.cameras] == ["cam0", "cam1", "cam2"]  # the capture's names, matched by order
    assert loaded.report["names_in_file"] == ["A", "B", "C"] and loaded.report["source"] == str(path.resolve())
    K = np.array(loaded.cameras[0].K)
    assert K[0, 2] == 32.0 and K[1, 2] == 24.0 and K[0, 0] == 80.0  # OpenCV's centres + 0.5: the image centre
    np.testing.assert_allclose(loaded.cameras[1].R, _file_record()["R"])
    assert loaded.cameras[2].t == [0.1, 0.0, 1.0] and (loaded.cameras[2].width, loaded.cameras[2].height) == (64, 48)
    np.testing.assert_array_equal(loaded.distortion[0], dist)
    assert loaded.distortion[1] is None and loaded.distortion[2] is None  # all zero, absent: nothing to undo


def test_saved_cameras_load_back_unchanged(tmp_path: Path) -> None:
    first = calib.load_calibration(_write(tmp_path / "a.json", {"cameras": [_file_record(dist=[0.1, 0, 0, 0])]}),
                                   ["cam0"], [(64, 48)])
    path = calib.save_calibration(first.cameras, tmp_path / "b.json", first.distortion)
    assert json.loads(path.read_text())["cameras"][0]["K"][0][2] == 31.5  # written back in OpenCV's convention
    again = calib.load_calibration(path, ["cam0"], [(64, 48)])
    assert again.cameras == first.cameras
    np.testing.assert_array_equal(again.distortion[0], first.distortion[0])


def _two(**changes: Any) -> dict[str, Any]:
    return {"cameras": [_file_record("A", **changes), _file_record("B")]}


def _without(key: str) -> dict[str, Any]:
    record = _file_record("A")
    del record[key]
    return {"cameras": [record, _file_record("B")]}


MALFORMED = [
    ("not json", "{'cameras': ", "not valid JSON"),
    ("not an object", [1, 2], "no 'cameras' list"),
    ("no cameras list", {"cams": []}, "no 'cameras' list"),
    ("cameras not a list", {"cameras": {"A": {}}}, "no 'cameras' list"),
    ("too few cameras", {"cameras": [_file_record()]}, "1 cameras in the file but 2 in the capture"),
    ("too many cameras", {"cameras": [_file_record()] * 3}, "3 cameras in the file but 2 in the capture"),
    ("record not an object", {"cameras": [[1, 2], _file_record()]}, "camera 0 .* is not an object"),
    ("missing R", _without("R"), "lacks R"),
    ("missing width", _without("width"), "lacks width"),
    ("K 2x2", _two(K=[[1, 0], [0, 1]]), r"K has shape \[2, 2\], expected \[3, 3\]"),
    ("K not numbers", _two(K="eye"), "K is not an array of numbers"),
    ("K bottom row", _two(K=[[80, 0, 31.5], [0, 80, 23.5], [0, 1, 1]]), r"K must be \[\[fx"),
    ("R 3x2", _two(R=[[1, 0], [0, 1], [0, 0]]), r"R has shape \[3, 2\]"),
    ("t 2", _two(t=[0, 1]), r"t has shape \[2\], expected \[3\]"),
    ("t NaN", _two(t=[0, float("nan"), 1]), "t holds NaN or infinite"),
    ("R infinite", _two(R=[[float("inf"), 0, 0], [0, 1, 0], [0, 0, 1]]), "R holds NaN or infinite"),
    ("R scaled", _two(R=[[2, 0, 0], [0, 2, 0], [0, 0, 2]]), "R is not a rotation"),
    ("R reflection", _two(R=[[-1, 0, 0], [0, 1, 0], [0, 0, 1]]), "R is not a rotation"),
    ("width differs", _two(width=100), r"camera 0 \(A\) is 100x48 but its video \(camera cam0\) gives 64x48"),
    ("height differs", _two(height=50), r"is 64x50 but its video \(camera cam0\) gives 64x48"),
    ("width not whole", _two(width=63.5), "width must be a positive whole number"),
    ("height text", _two(height="48"), "height must be a positive whole number"),
    ("dist length", _two(dist=[0.1, 0.2, 0.3]), "dist must hold 4, 5, 8, 12, 14"),
    ("dist NaN", _two(dist=[0.1, float("nan"), 0, 0]), "dist must hold"),
    ("dist nested", _two(dist=[[0.1, 0.2], [0, 0]]), "dist must hold"),
    ("dist text", _two(dist="none"), "dist is not a list of numbers"),
]


@pytest.mark.parametrize("content, message", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_a_malformed_file_is_refused_naming_the_file_and_the_format(tmp_path: Path, content: Any,
                                                                   message: str) -> None:
    path = _write(tmp_path / "cams.json", content)
    with pytest.raises(CacheError, match=message) as error:
        calib.load_calibration(path, ["cam0", "cam1"], [(64, 48)] * 2)
    assert str(path) in str(error.value) and calib.CALIBRATION_FORMAT in str(error.value)


@pytest.mark.parametrize("make", [lambda d: d / "none.json", lambda d: d])
def test_a_missing_file_is_refused(tmp_path: Path, make: Any) -> None:
    path = make(tmp_path)
    with pytest.raises(CacheError, match="does not exist|is not a file") as error:
        calib.load_calibration(path, ["cam0"], [(64, 48)])
    assert str(path) in str(error.value) and calib.CALIBRATION_FORMAT in str(error.value)


# ---------------------------------------------------------------------------------------------- a synthetic rig
def _face(rng: np.random.Generator, count: int = 478) -> np.ndarray:
    """``(L, 3)`` metres: a face-like ellipsoid cap ~15 cm wide, 19 cm tall, bulging towards -z (the camera)."""
    u, v = rng.uniform(-1, 1, count), rng.uniform(-1, 1, count)
    return np.stack([0.075 * u, 0.095 * v, -0.09 + 0.035 * (u**2 + v**2)], 1)


def _facemesh(points: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(N, L, 3)``: pixels of world ``points (N, L, 3)``, plus FaceMesh's depth relative to the centroid."""
    cam = points @ R.T + t
    uvw = cam @ K.T
    depth = cam[..., 2]
    centroid = depth.mean(-1, keepdims=True)
    z = (depth - centroid) * K[0, 0] / centroid
    return np.concatenate([uvw[..., :2] / uvw[..., 2:], z[..., None]], -1)


def _truth_rig() -> tuple[np.ndarray, np.ndarray]:
    """The synthetic scene's rig ``(3, 3, 3)``, ``(3, 3)``, world -> camera."""
    truth = make_cameras(("frontal", "diagonal_left", "diagonal_right"), *SIZE, 0.5)
    return truth.R.double().numpy(), truth.t.double().numpy()


def _capture(seed: int, outliers: float = 0.0, frames: int = 30, focal_scale: float = 1.0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmarks ``(N, 3, 478, 3)``, valid ``(N, 3)`` and the reference ``(478, 3)`` of a head moving before the rig.

    The lens is the default one the estimate assumes, times ``focal_scale``.
    """
    rng = np.random.default_rng(seed)
    reference = _face(rng)
    R, t = _truth_rig()
    K = np.array(approximate_intrinsics(*SIZE))
    K[[0, 1], [0, 1]] *= focal_scale
    yaw = rng.uniform(-25, 25, frames)
    pitch_roll = rng.normal(0, 3, (frames, 2))
    heads = Rotation.from_euler("YXZ", np.c_[yaw, pitch_roll], degrees=True)
    shift = rng.normal(0, 0.01, (frames, 3))  # about a centimetre
    world = np.stack([heads[i].apply(reference) + shift[i] for i in range(frames)])  # (N, L, 3)
    landmarks = np.stack([_facemesh(world, K, R[k], t[k]) for k in range(3)], 1)  # (N, C, L, 3)
    landmarks[..., :2] += rng.normal(0, XY_NOISE_PX, landmarks[..., :2].shape)
    landmarks[..., 2] += rng.normal(0, Z_NOISE_PX, landmarks[..., 2].shape)
    bad = rng.random(landmarks.shape[:3]) < outliers  # (N, C, L) landmarks that slipped
    angle = rng.uniform(0, 2 * np.pi, bad.sum())
    landmarks[bad, :2] += OUTLIER_PX * np.c_[np.cos(angle), np.sin(angle)]
    return landmarks, np.ones((frames, 3), bool), reference


def _rig_errors(result: calib.Calibration) -> tuple[list[float], list[float]]:
    """Per camera 1, 2: rotation error (deg) and centre error (m), the truth expressed in camera 0's frame."""
    R, t = _truth_rig()
    rotations, centres = [], []
    for k in (1, 2):
        est_R, est_t = np.array(result.cameras[k].R), np.array(result.cameras[k].t)
        true_R = R[k] @ R[0].T
        true_centre = R[0] @ (-R[k].T @ t[k]) + t[0]
        rotations.append(float(np.degrees(Rotation.from_matrix(est_R @ true_R.T).magnitude())))
        centres.append(float(np.linalg.norm(-est_R.T @ est_t - true_centre)))
    return rotations, centres


@pytest.fixture(scope="module")
def clean() -> calib.Calibration:
    landmarks, valid, reference = _capture(seed=0)
    return adjust.estimate_calibration(landmarks, valid, [SIZE] * 3, NAMES, reference)


def test_bundle_adjustment_recovers_the_rig(clean: calib.Calibration) -> None:
    rotations, centres = _rig_errors(clean)
    assert max(rotations) < 1.0, rotations
    assert max(centres) < 0.02, centres  # metres: the reference's scale carries over to the rig
    assert clean.estimated and clean.distortion == [None] * 3
    assert clean.cameras[0].R == np.eye(3).tolist() and clean.cameras[0].t == [0.0, 0.0, 0.0]
    assert all(c.K == approximate_intrinsics(*SIZE) for c in clean.cameras)
    assert [c.name for c in clean.cameras] == NAMES
    # The left diagonal camera stands to camera 0's left (x < 0), the right one to its right.
    assert (-np.array(clean.cameras[1].R).T @ clean.cameras[1].t)[0] < -0.3
    assert (-np.array(clean.cameras[2].R).T @ clean.cameras[2].t)[0] > 0.3


def test_the_report_shows_the_fit_and_its_assumptions(clean: calib.Calibration) -> None:
    report = clean.report
    json.dumps(report)  # goes into the manifest
    assert report["method"] == adjust.METHOD and "default field of view" in report["intrinsics"]
    assert report["frames"] == 30 and report["iterations"] > 0 and report["converged"]
    noise_floor = XY_NOISE_PX * np.sqrt(2)  # rms of the 2-D noise
    for name in NAMES:
        error = report["reprojection"][name]
        assert error["rms_px"] < 1.5 and error["rms_px"] < 1.2 * noise_floor, error
        assert error["landmarks"] == 30 * len(RIGID_LANDMARKS)
        # The start alone (FaceMesh's noisy depth) would not pass the bound: the adjustment did the work.
        assert report["rms_px_initial"][name] > 1.5


def test_outlying_landmarks_do_not_move_the_rig() -> None:
    landmarks, valid, reference = _capture(seed=1, outliers=0.05)
    result = adjust.estimate_calibration(landmarks, valid, [SIZE] * 3, NAMES, reference)
    rotations, centres = _rig_errors(result)
    assert max(rotations) < 1.5, rotations
    assert max(centres) < 0.02, centres
    for name in NAMES:  # the inliers fit to the noise; the rms carries the 30 px outliers
        assert result.report["reprojection"][name]["median_px"] < 1.5 * XY_NOISE_PX * np.sqrt(2)


def test_a_camera_linked_only_through_another_is_placed() -> None:
    landmarks, valid, reference = _capture(seed=2, frames=40)
    valid[:20, 2] = False  # right camera: only in the second half
    valid[20:, 0] = False  # front camera: only in the first half; the left one sees both halves
    landmarks[~valid] = np.nan  # what a landmark store holds where no face was found
    result = adjust.estimate_calibration(landmarks, valid, [SIZE] * 3, NAMES, reference, max_frames=12)
    assert result.report["links"] == [["front", "left"], ["left", "right"]]
    rotations, centres = _rig_errors(result)
    assert max(rotations) < 1.0 and max(centres) < 0.03, (rotations, centres)


def test_focal_refinement_finds_a_longer_lens() -> None:
    """The real lens is 1.8x the default: refining per-camera focal scales recovers it, and the rig's size.

    With outliers too: the solver must then walk far along the focal-distance valley, which it does only with
    accurate trust-region steps (``LSMR_OPTIONS``; lsmr's defaults stop ~12 cm off).
    """
    landmarks, valid, reference = _capture(seed=3, focal_scale=1.8, outliers=0.05)
    guessed = adjust.estimate_calibration(landmarks, valid, [SIZE] * 3, NAMES, reference)
    assert min(_rig_errors(guessed)[1]) > 0.1  # the default lens makes a rig far too small
    refined = adjust.estimate_calibration(landmarks, valid, [SIZE] * 3, NAMES, reference, refine_focal=True)
    rotations, centres = _rig_errors(refined)
    assert max(rotations) < 1.0 and max(centres) < 0.04, (rotations, centres)
    for k, name in enumerate(NAMES):
        assert refined.report["focal_scale"][name] == pytest.approx(1.8, rel=0.05)
        assert refined.cameras[k].K[0][0] == pytest.approx(1.8 * approximate_intrinsics(*SIZE)[0][0], rel=0.05)
    assert "refined" in refined.report["intrinsics"]


def test_the_analytic_jacobian_matches_finite_differences() -> None:
    rng = np.random.default_rng(5)
    for refine_focal in (False, True):
        valid = rng.random((4, 3)) < 0.8
        valid[:, 1] = True
        frame, camera = np.nonzero(valid)
        reference = _face(rng, len(RIGID_LANDMARKS))
        problem = adjust._Problem(frame, camera, rng.normal(128, 10, (len(frame), len(RIGID_LANDMARKS), 2)),
                                 np.stack([np.array(approximate_intrinsics(256, 200))] * 3), reference, 4,
                                 refine_focal)
        R = Rotation.from_rotvec(rng.normal(0, 0.3, (3, 3))).as_matrix()
        t = np.c_[rng.normal(0, 0.1, (3, 2)), np.ones(3)]
        heads = np.c_[rng.normal(0, 0.3, (4, 3)), rng.normal(0, 0.05, (4, 2)), np.full(4, 0.3)]
        x = problem.pack(R, t, heads, reference + rng.normal(0, 0.01, reference.shape))
        if refine_focal:
            x[-3:] = rng.normal(0, 0.1, 3)
        numeric = approx_derivative(problem.residuals, x, method="3-point")
        np.testing.assert_allclose(problem.jacobian(x).toarray(), numeric, atol=1e-5 * np.abs(numeric).max())


# ---------------------------------------------------------------------------------------------- edge cases
def test_a_single_camera_is_the_world_frame() -> None:
    landmarks, valid, reference = _capture(seed=4, frames=3)
    result = adjust.estimate_calibration(landmarks[:, :1], valid[:, :1], [(320, 240)], ["solo"], reference)
    (camera,) = result.cameras
    assert result.estimated and camera.name == "solo" and (camera.width, camera.height) == (320, 240)
    assert camera.R == np.eye(3).tolist() and camera.t == [0.0, 0.0, 0.0]
    assert camera.K == approximate_intrinsics(320, 240) and camera.K[0][0] == 1.2 * 320
    assert "single camera" in result.report["method"] and "default field of view" in result.report["intrinsics"]


def test_cameras_that_never_see_the_face_together_are_named() -> None:
    landmarks, valid, reference = _capture(seed=4, frames=6)
    valid[:] = [[True, True, False]] * 3 + [[False, False, True]] * 3
    with pytest.raises(CacheError, match=r"camera right never sees the face .* cameras front, left .*--calibration "
                                         "FILE"):
        adjust.estimate_calibration(landmarks, valid, [SIZE] * 3, NAMES, reference)
    valid[:] = [[True, False, False]] * 3 + [[False, True, True]] * 3
    with pytest.raises(CacheError, match="cameras left, right never see the face in a frame where camera front"):
        adjust.estimate_calibration(landmarks, valid, [SIZE] * 3, NAMES, reference)


def test_a_camera_without_any_face_is_named() -> None:
    landmarks, valid, reference = _capture(seed=4, frames=6)
    valid[:, 1] = False
    with pytest.raises(CacheError, match="camera left never sees a face.*--calibration FILE"):
        adjust.estimate_calibration(landmarks, valid, [SIZE] * 3, NAMES, reference)


def test_bad_landmarks_are_refused() -> None:
    landmarks, valid, reference = _capture(seed=4, frames=6)
    nan = landmarks.copy()
    nan[2, 1, 7, 0] = np.nan
    with pytest.raises(CacheError, match="NaN"):
        adjust.estimate_calibration(nan, valid, [SIZE] * 3, NAMES, reference)
    for bad in ((landmarks[:, :2], valid, [SIZE] * 3, NAMES, reference),  # 2 cameras of landmarks, 3 of valid
                (landmarks, valid[:4], [SIZE] * 3, NAMES, reference),  # frame counts differ
                (landmarks, valid, [SIZE] * 2, NAMES, reference),  # a size missing
                (landmarks, valid, [SIZE] * 3, NAMES[:2], reference),  # a name missing
                (landmarks[..., :2], valid, [SIZE] * 3, NAMES, reference),  # no depth
                (landmarks[:, :, :400], valid, [SIZE] * 3, NAMES, reference[:400]),  # not FaceMesh's count
                (landmarks, valid, [SIZE] * 3, NAMES, reference[:468])):  # reference of another count
        with pytest.raises(CacheError, match="disagree"):
            adjust.estimate_calibration(*bad)
