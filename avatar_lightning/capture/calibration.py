"""The capture's cameras from the user's calibration file, and the record every way of getting them returns.

Loading (:func:`load_calibration`): a JSON file in OpenCV conventions (:data:`CALIBRATION_FORMAT`), one record
per camera in the order of ``--video``. OpenCV puts pixel centres at integers, the project at +0.5
(``render/cameras.py``), so 0.5 is added to cx and cy here, once. Every problem is a :class:`CacheError` naming
the file, what is wrong and what the format is: a wrong file must stop ``prepare`` before any decoding.

Without a file the cameras are estimated from FaceMesh landmarks (:mod:`.bundle_adjustment`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avatar_lightning.cache.manifest import CameraRecord
from avatar_lightning.errors import CacheError

CALIBRATION_FORMAT = (
    'a JSON object {"cameras": [{"name": str, "K": 3x3, "R": 3x3, "t": [3], "width": int, "height": int, '
    '"dist": [k1, k2, p1, p2(, k3(, k4, k5, k6))] (optional)}, ...]}, in OpenCV conventions (X_cam = R X_world '
    "+ t, x right, y down, z forward, pixel centres at integers), one record per --video, in the same order"
)
DISTORTION_LENGTHS = (4, 5, 8, 12, 14)  # the coefficient counts OpenCV accepts
ROTATION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Calibration:
    """Cameras in the project's convention, OpenCV distortion per camera (None: none), and how they were had.

    ``report`` is JSON-able and goes into the cache's ``meta.prepare.calibration``.
    """

    cameras: list[CameraRecord]
    distortion: list[np.ndarray | None]
    estimated: bool
    report: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- loading
def _fail(path: Path, what: str) -> CacheError:
    return CacheError(f"calibration file {path}: {what}; the file must be {CALIBRATION_FORMAT}")


def _array(value: Any, shape: tuple[int, ...], what: str, path: Path) -> np.ndarray:
    """``value`` as a finite float array of ``shape``, or a CacheError saying which it is not."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(path, f"{what} is not an array of numbers") from None
    if array.shape != shape:
        raise _fail(path, f"{what} has shape {list(array.shape)}, expected {list(shape)}")
    if not np.isfinite(array).all():
        raise _fail(path, f"{what} holds NaN or infinite values")
    return array


def _intrinsics(value: Any, what: str, path: Path) -> np.ndarray:
    K = _array(value, (3, 3), f"{what} K", path)
    if K[0, 0] <= 0 or K[1, 1] <= 0 or np.abs(K[1:, :2] - [[0, K[1, 1]], [0, 0]]).max() > 0 or K[2, 2] != 1:
        raise _fail(path, f"{what} K must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
    return K


def _rotation(value: Any, what: str, path: Path) -> np.ndarray:
    R = _array(value, (3, 3), f"{what} R", path)
    if np.abs(R @ R.T - np.eye(3)).max() > ROTATION_TOLERANCE or abs(np.linalg.det(R) - 1) > ROTATION_TOLERANCE:
        raise _fail(path, f"{what} R is not a rotation matrix (needs R R^T = I within {ROTATION_TOLERANCE} and "
                          "det R = 1)")
    return R


def _size(entry: dict[str, Any], what: str, path: Path) -> tuple[int, int]:
    size = []
    for key in ("width", "height"):
        value = entry[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value <= 0:
            raise _fail(path, f"{what} {key} must be a positive whole number of pixels, got {value!r}")
        size.append(int(value))
    return size[0], size[1]


def _distortion(value: Any, what: str, path: Path) -> np.ndarray | None:
    """OpenCV coefficients, or None where there are none (absent, null or all zero: nothing to undo)."""
    if value is None:
        return None
    try:
        dist = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(path, f"{what} dist is not a list of numbers") from None
    if dist.ndim != 1 or len(dist) not in DISTORTION_LENGTHS or not np.isfinite(dist).all():
        raise _fail(path, f"{what} dist must hold {', '.join(map(str, DISTORTION_LENGTHS))} finite OpenCV "
                          f"coefficients, got {dist.reshape(-1).tolist()}")
    return dist if dist.any() else None


def _read_entries(path: Path) -> list[Any]:
    """The file's ``cameras`` list; the file must exist, be JSON and hold an object with that list."""
    if not path.is_file():
        raise _fail(path, "does not exist" if not path.exists() else "is not a file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise _fail(path, f"cannot be read ({err})") from None
    except json.JSONDecodeError as err:
        raise _fail(path, f"is not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list):
        raise _fail(path, "has no 'cameras' list (it must be an object holding one)")
    return data["cameras"]


def _camera(entry: Any, index: int, name: str, size: tuple[int, int], path: Path
            ) -> tuple[CameraRecord, np.ndarray | None]:
    """One file record as the capture camera ``name`` of video size ``size``: checked, cx, cy moved by +0.5."""
    what = f"camera {index} ({entry.get('name', 'unnamed') if isinstance(entry, dict) else 'unnamed'})"
    if not isinstance(entry, dict):
        raise _fail(path, f"{what} is not an object")
    missing = [key for key in ("K", "R", "t", "width", "height") if key not in entry]
    if missing:
        raise _fail(path, f"{what} lacks {', '.join(missing)}")
    K = _intrinsics(entry["K"], what, path)
    R = _rotation(entry["R"], what, path)
    t = _array(entry["t"], (3,), f"{what} t", path)
    width, height = _size(entry, what, path)
    if (width, height) != tuple(size):
        raise _fail(path, f"{what} is {width}x{height} but its video (camera {name}) gives {size[0]}x{size[1]} "
                          "frames (records are matched to --video by order)")
    dist = _distortion(entry.get("dist"), what, path)
    K[:2, 2] += 0.5  # OpenCV's pixel centres are at integers, ours at +0.5
    return CameraRecord(name, K.tolist(), R.tolist(), t.tolist(), width, height), dist


def load_calibration(path: str | Path, names: Sequence[str], sizes: Sequence[tuple[int, int]]) -> Calibration:
    """Cameras from ``path`` (:data:`CALIBRATION_FORMAT`), the i-th record for the i-th capture camera.

    ``names`` are the capture's camera names (kept; the file's go to ``report``), ``sizes`` their videos'
    ``(width, height)``, which the file must match.
    """
    path = Path(path)
    if len(names) != len(sizes):
        raise CacheError(f"load_calibration: {len(names)} camera names but {len(sizes)} sizes")
    entries = _read_entries(path)
    if len(entries) != len(names):
        raise _fail(path, f"{len(entries)} cameras in the file but {len(names)} in the capture (--video given "
                          f"{len(names)} times)")
    cameras, distortion = [], []
    for i, (entry, name, size) in enumerate(zip(entries, names, sizes, strict=True)):
        record, dist = _camera(entry, i, name, size, path)
        cameras.append(record)
        distortion.append(dist)
    file_names = [str(e.get("name", i)) for i, e in enumerate(entries)]
    return Calibration(cameras, distortion, estimated=False,
                       report={"source": str(path.resolve()), "names_in_file": file_names,
                               "distorted": [d is not None for d in distortion]})


def scaled_camera(record: CameraRecord, size: tuple[int, int]) -> CameraRecord:
    """``record`` for its images resized to ``size = (width, height)``: pixel coordinates (the project's, with
    pixel centres at +0.5, so an edge at 0) scale by the same factors, so K's rows do too."""
    sx, sy = size[0] / record.width, size[1] / record.height
    K = (np.diag([sx, sy, 1.0]) @ np.asarray(record.K, np.float64)).tolist()
    return CameraRecord(record.name, K, record.R, record.t, size[0], size[1])


def save_calibration(cameras: Sequence[CameraRecord], path: str | Path,
                     distortion: Sequence[np.ndarray | None] | None = None) -> Path:
    """Write ``cameras`` as a file :func:`load_calibration` reads (OpenCV conventions: cx, cy - 0.5)."""
    records = []
    for i, camera in enumerate(cameras):
        K = np.array(camera.K, np.float64)
        K[:2, 2] -= 0.5
        record = {"name": camera.name, "K": K.tolist(), "R": camera.R, "t": camera.t, "width": camera.width,
                  "height": camera.height}
        if distortion is not None and distortion[i] is not None:
            record["dist"] = np.asarray(distortion[i], np.float64).tolist()
        records.append(record)
    path = Path(path)
    path.write_text(json.dumps({"cameras": records}, indent=1))
    return path


