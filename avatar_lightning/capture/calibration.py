"""The capture's cameras: loaded from the user's calibration file, or estimated from FaceMesh landmarks.

Loading: a JSON file in OpenCV conventions (:data:`CALIBRATION_FORMAT`), one record per camera in the order of
``--video``. OpenCV puts pixel centres at integers; the project at +0.5 (``render/cameras.py``), so 0.5 is added
to cx and cy here, once.

Estimating: the world frame is camera 0's (R = I, t = 0). Intrinsics start from a default field of view (the
same guess ``ingest`` makes). With several cameras, a bundle adjustment (SciPy ``least_squares``, robust loss,
sparse Jacobian) fits the other cameras' extrinsics, one head pose per sampled frame and the 3-D rigid
landmarks (the ones expression hardly moves) to every camera's FaceMesh landmarks; a shared focal scale is
refined too (weakly observable: it is reported). The scene's scale is fixed by the actor's template, whose face
is ``FACE_WIDTH_M`` wide: the structure's RMS radius is held at the template's. A single camera needs no
extrinsics; its focal length is chosen by ``prepare`` from the tracking fit's error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import lil_matrix
from scipy.spatial.transform import Rotation

from avatar_lightning.cache import CacheError, CameraRecord
from avatar_lightning.features.mediapipe_landmarks import RIGID_LANDMARKS
from avatar_lightning.stages.ingest import approximate_intrinsics

CALIBRATION_FORMAT = (
    'a JSON object {"cameras": [{"name": str, "K": 3x3, "R": 3x3, "t": [3], "width": int, "height": int, '
    '"dist": [k1, k2, p1, p2(, k3, ...)] (optional)}, ...]}, OpenCV conventions (X_cam = R X_world + t, pixel '
    "centres at integers), one camera per --video in the same order"
)
DEFAULT_INTRINSICS = "default field of view: f = 1.2 x the longer image side, principal point at the centre"
ROBUST_SCALE_PX = 2.0
GAUGE_WEIGHT = 1e3


def default_intrinsics(width: int, height: int) -> list[list[float]]:
    """The pinhole guess for an uncalibrated camera (the one ``ingest`` uses)."""
    return approximate_intrinsics(width, height)


@dataclass(frozen=True)
class Calibration:
    """Cameras in the project's convention, OpenCV distortion per camera (None: none), and how they were had."""

    cameras: list[CameraRecord]
    distortion: list[np.ndarray | None]
    estimated: bool
    report: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- loading
def _matrix(value: Any, shape: tuple[int, ...], what: str, path: Path) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CacheError(f"{path}: {what} is not numeric; the file must be {CALIBRATION_FORMAT}") from None
    if array.shape != shape:
        raise CacheError(f"{path}: {what} has shape {list(array.shape)}, expected {list(shape)}")
    if not np.isfinite(array).all():
        raise CacheError(f"{path}: {what} holds NaN or infinite values")
    return array


def load_calibration(path: str | Path, names: Sequence[str], sizes: Sequence[tuple[int, int]]) -> Calibration:
    """Cameras from ``path``, matched to the capture's cameras by order; every problem names the file."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"calibration file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheError(f"{path}: not valid JSON ({err}); the file must be {CALIBRATION_FORMAT}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list):
        raise CacheError(f"{path}: no 'cameras' list; the file must be {CALIBRATION_FORMAT}")
    entries = data["cameras"]
    if len(entries) != len(names):
        raise CacheError(f"{path}: {len(entries)} cameras in the file but {len(names)} --video given; "
                         "give one record per camera, in --video order")
    cameras, distortion, file_names = [], [], []
    for i, (entry, name, (width, height)) in enumerate(zip(entries, names, sizes, strict=True)):
        what = f"camera {i}"
        if not isinstance(entry, dict):
            raise CacheError(f"{path}: {what} is not an object; the file must be {CALIBRATION_FORMAT}")
        missing = [key for key in ("K", "R", "t", "width", "height") if key not in entry]
        if missing:
            raise CacheError(f"{path}: {what} lacks {missing}; the file must be {CALIBRATION_FORMAT}")
        K = _matrix(entry["K"], (3, 3), f"{what} K", path)
        R = _matrix(entry["R"], (3, 3), f"{what} R", path)
        t = _matrix(entry["t"], (3,), f"{what} t", path)
        if np.abs(R @ R.T - np.eye(3)).max() > 1e-4 or np.linalg.det(R) < 0:
            raise CacheError(f"{path}: {what} R is not a rotation matrix (R R^T = I, det R = 1)")
        if (int(entry["width"]), int(entry["height"])) != (width, height):
            raise CacheError(f"{path}: {what} is {entry['width']}x{entry['height']} but its video ({name}) gives "
                             f"{width}x{height} frames")
        dist = None
        if entry.get("dist") is not None:
            dist = np.asarray(entry["dist"], dtype=np.float64).reshape(-1)
            if len(dist) not in (4, 5, 8, 12, 14) or not np.isfinite(dist).all():
                raise CacheError(f"{path}: {what} dist must hold 4, 5, 8, 12 or 14 finite OpenCV coefficients")
            dist = None if not dist.any() else dist
        K = K.copy()
        K[:2, 2] += 0.5  # OpenCV's pixel centres are at integers, ours at +0.5
        cameras.append(CameraRecord(name, K.tolist(), R.tolist(), t.tolist(), width, height))
        distortion.append(dist)
        file_names.append(str(entry.get("name", i)))
    return Calibration(cameras, distortion, estimated=False,
                       report={"source": str(path.resolve()), "names_in_file": file_names})


# ---------------------------------------------------------------------------------------------- estimating
def _head_in_camera(points: np.ndarray, reference: np.ndarray, K: np.ndarray) -> np.ndarray:
    """``(B, 6)`` head poses in one camera's frame from its landmarks ``(B, L, 3)`` (weak perspective)."""
    from avatar_lightning.capture.fitting import initial_pose

    return initial_pose(points, reference, K, np.eye(3), np.zeros(3))


def _project(points: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    xc = points @ R.T + t
    uvw = xc @ K.T
    return uvw[..., :2] / np.maximum(uvw[..., 2:3], 1e-6)


def _initial_rig(landmarks: np.ndarray, valid: np.ndarray, reference: np.ndarray, Ks: list[np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera rotations and translations ``(C, ...)`` (camera 0: identity), head poses ``(S, 6)`` in its frame."""
    n, c = valid.shape
    poses = np.full((n, c, 6), np.nan)
    for k in range(c):
        rows = np.flatnonzero(valid[:, k])
        if len(rows):
            poses[rows, k] = _head_in_camera(landmarks[rows, k], reference, Ks[k])
    rots, trans = [np.eye(3)], [np.zeros(3)]
    for k in range(1, c):
        both = valid[:, 0] & valid[:, k]
        if not both.any():  # chain through a camera that shares frames with both would be next; keep it simple
            raise CacheError(f"cameras 0 and {k} never see the face in the same frame; the cameras cannot be "
                             "estimated from landmarks: pass --calibration FILE")
        r0 = Rotation.from_rotvec(poses[both, 0, :3]).as_matrix()
        rk = Rotation.from_rotvec(poses[both, k, :3]).as_matrix()
        rel = Rotation.from_matrix(rk @ r0.transpose(0, 2, 1)).mean().as_matrix()
        t_rel = np.median(poses[both, k, 3:] - poses[both, 0, 3:] @ rel.T, axis=0)
        rots.append(rel)
        trans.append(t_rel)
    head = np.zeros((n, 6))
    for i in range(n):
        k = int(np.flatnonzero(valid[i])[0])
        r = rots[k].T @ Rotation.from_rotvec(poses[i, k, :3]).as_matrix()
        head[i] = np.r_[Rotation.from_matrix(r).as_rotvec(), rots[k].T @ (poses[i, k, 3:] - trans[k])]
    return np.stack(rots), np.stack(trans), head


def estimate_calibration(landmarks: np.ndarray, valid: np.ndarray, sizes: Sequence[tuple[int, int]],
                         names: Sequence[str], reference: np.ndarray, max_frames: int = 40,
                         refine_focal: bool = True) -> Calibration:
    """Cameras from FaceMesh landmarks ``(N, C, L, 3)`` (pixels) seen with ``valid (N, C)``; see the module doc.

    ``reference (L, 3)``: the actor's neutral landmark shape in metres (the template's first L vertices).
    """
    landmarks, valid = np.asarray(landmarks, np.float64), np.asarray(valid, bool)
    n, c = valid.shape
    if landmarks.shape[:2] != (n, c) or landmarks.shape[-1] != 3 or len(sizes) != c or len(names) != c:
        raise CacheError(f"estimate_calibration: landmarks {list(landmarks.shape)}, valid {list(valid.shape)}, "
                         f"{len(sizes)} sizes and {len(names)} names disagree")
    Ks = [np.array(default_intrinsics(w, h)) for w, h in sizes]
    report: dict[str, Any] = {"intrinsics": DEFAULT_INTRINSICS, "world": f"camera {names[0]}'s frame"}
    if c == 1:
        record = CameraRecord(names[0], Ks[0].tolist(), np.eye(3).tolist(), [0.0, 0.0, 0.0], *sizes[0])
        return Calibration([record], [None], True, {**report, "method": "single camera: identity extrinsics"})
    for k, name in enumerate(names):
        if not valid[:, k].any():
            raise CacheError(f"camera {name} never sees a face; its calibration cannot be estimated: pass "
                             "--calibration FILE")
    if not np.isfinite(landmarks[valid]).all():
        raise CacheError("estimate_calibration: landmarks marked valid hold NaN")
    shared = np.flatnonzero(valid.sum(1) >= 2)
    if not len(shared):
        raise CacheError(f"no frame in which two of the cameras {list(names)} see the face: the cameras cannot be "
                         "estimated from landmarks; pass --calibration FILE")
    rows = shared[np.linspace(0, len(shared) - 1, min(max_frames, len(shared))).round().astype(int)]
    rigid = list(RIGID_LANDMARKS)
    obs, seen = landmarks[rows][:, :, rigid, :2], valid[rows]  # (S, C, R, 2)
    structure0 = reference[rigid] - reference[rigid].mean(0)
    radius = np.sqrt((structure0**2).sum(1).mean())
    rots, trans, head = _initial_rig(landmarks[rows][:, :, :, :], seen, reference, Ks)
    head[:, 3:] += Rotation.from_rotvec(head[:, :3]).apply(reference[rigid].mean(0))  # origin at the centroid
    s, r = len(rows), len(rigid)

    def unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        cam = x[: 6 * (c - 1)].reshape(c - 1, 6)
        poses = x[6 * (c - 1) : 6 * (c - 1) + 6 * s].reshape(s, 6)
        points = x[6 * (c - 1) + 6 * s : 6 * (c - 1) + 6 * s + 3 * r].reshape(r, 3)
        focal = float(np.exp(x[-1])) if refine_focal else 1.0
        R = np.concatenate([np.eye(3)[None], Rotation.from_rotvec(cam[:, :3]).as_matrix()])
        t = np.concatenate([np.zeros((1, 3)), cam[:, 3:]])
        return R, t, poses, points, focal

    def residuals(x: np.ndarray) -> np.ndarray:
        R, t, poses, points, focal = unpack(x)
        world = Rotation.from_rotvec(poses[:, :3]).as_matrix() @ points.T  # (S, 3, R)
        world = world.transpose(0, 2, 1) + poses[:, None, 3:]
        out = np.zeros((s, c, r, 2))
        for k in range(c):
            K = Ks[k].copy()
            K[:2, :2] *= focal
            out[:, k] = np.where(seen[:, k, None, None], _project(world, K, R[k], t[k]) - obs[:, k], 0.0)
        gauge = [GAUGE_WEIGHT * (np.sqrt((points**2).sum(1).mean()) / radius - 1),
                 *(GAUGE_WEIGHT * points.mean(0) / radius)]
        return np.concatenate([out.reshape(-1), gauge])

    x0 = np.concatenate([np.concatenate([Rotation.from_matrix(rots[1:]).as_rotvec(), trans[1:]], 1).reshape(-1),
                         head.reshape(-1), structure0.reshape(-1), [0.0] if refine_focal else []])
    sparsity = _sparsity(s, c, r, refine_focal)
    before = _rms(residuals(x0)[:-4], seen, r)
    result = least_squares(residuals, x0, jac_sparsity=sparsity, method="trf", loss="soft_l1",
                           f_scale=ROBUST_SCALE_PX, x_scale="jac", max_nfev=200)
    R, t, _, _, focal = unpack(result.x)
    per_camera = np.abs(result.fun[:-4].reshape(s, c, r, 2))
    records, stats = [], {}
    for k, name in enumerate(names):
        K = Ks[k].copy()
        K[:2, :2] *= focal
        records.append(CameraRecord(name, K.tolist(), R[k].tolist(), t[k].tolist(), *sizes[k]))
        err = np.linalg.norm(per_camera[:, k], axis=-1)[seen[:, k]]
        stats[name] = {"rms_px": float(np.sqrt((err**2).mean())), "median_px": float(np.median(err))}
    report.update({
        "method": "bundle adjustment of FaceMesh rigid landmarks (scipy least_squares, soft-L1)",
        "frames": int(s), "rigid_landmarks": r, "evaluations": int(result.nfev),
        "rms_px_before": before, "reprojection": stats, "focal_scale": focal,
        "intrinsics": DEFAULT_INTRINSICS + (f", refined by a shared scale {focal:.3f}" if refine_focal else ""),
    })
    return Calibration(records, [None] * c, True, report)


def _rms(residual: np.ndarray, seen: np.ndarray, r: int) -> float:
    s, c = seen.shape
    err = np.linalg.norm(residual.reshape(s, c, r, 2), axis=-1)[seen]
    return float(np.sqrt((err**2).mean()))


def _sparsity(s: int, c: int, r: int, focal: bool) -> lil_matrix:
    """Which parameters each residual depends on: its camera, its frame, its point (and the focal scale)."""
    cams, poses = 6 * (c - 1), 6 * s
    size = cams + poses + 3 * r + int(focal)
    m = lil_matrix((s * c * r * 2 + 4, size), dtype=int)
    for i in range(s):
        for k in range(c):
            for j in range(r):
                row = ((i * c + k) * r + j) * 2
                if k:
                    m[row : row + 2, 6 * (k - 1) : 6 * k] = 1
                m[row : row + 2, cams + 6 * i : cams + 6 * i + 6] = 1
                m[row : row + 2, cams + poses + 3 * j : cams + poses + 3 * j + 3] = 1
                if focal:
                    m[row : row + 2, size - 1] = 1
    m[s * c * r * 2 :, cams + poses : cams + poses + 3 * r] = 1
    return m


def save_calibration(cameras: Sequence[CameraRecord], path: str | Path) -> Path:
    """Write cameras as a calibration file ``load_calibration`` reads (OpenCV conventions: cx, cy - 0.5)."""
    records = []
    for camera in cameras:
        K = np.array(camera.K, np.float64)
        K[:2, 2] -= 0.5
        records.append({"name": camera.name, "K": K.tolist(), "R": camera.R, "t": camera.t, "width": camera.width,
                        "height": camera.height})
    path = Path(path)
    path.write_text(json.dumps({"cameras": records}, indent=1))
    return path
