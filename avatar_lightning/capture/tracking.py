"""Pose and blend weights of every frame, fitted to FaceMesh landmarks: what ``prepare`` and the ``tracked_blend``
features share.

:class:`LandmarkStore` reads every camera's landmarks by frame rows; :func:`fit_tracking` starts each frame from a
closed-form pose and fits pose and blend weights to all cameras (:class:`capture.fitting.HeadTracker`);
:func:`choose_focal` picks a monocular camera's focal length by reprojection error; :func:`triangulate_template`
re-fits the rest shape to several cameras.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from avatar_lightning.cache.manifest import CameraRecord
from avatar_lightning.capture.fitting import (
    FitResult,
    FitSettings,
    HeadTracker,
    RigCameras,
    face_heights,
    initial_pose,
    refine_rest_shape,
)
from avatar_lightning.capture.template import ActorTemplate, with_rest_shape
from avatar_lightning.render.mesh import vertex_normals

Progress = Callable[[str, int, int], None]

TEMPLATE_SAMPLE = 600  # landmark sets (evenly spaced) the neutral is estimated from
SHAPE_SAMPLE, SHAPE_ROUNDS = 200, 2  # frames and rounds of the multi-camera rest-shape triangulation
FOCAL_SAMPLE = 60  # frames the monocular focal search fits
# Focal length candidates (x the longer image side) for an uncalibrated single camera. FaceMesh's landmarks follow
# a near weak-perspective model, so its faces fit best with long lenses; the search picks by reprojection error.
FOCAL_CANDIDATES = (1.2, 2.0, 3.0, 4.5, 7.0, 10.0, 15.0)


def evenly(frames: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` of ``frames`` (sorted indices), evenly spaced."""
    if len(frames) <= count:
        return frames
    return frames[np.linspace(0, len(frames) - 1, count).round().astype(int)]


def template_camera(store: LandmarkStore, seen: np.ndarray) -> int:
    """The camera that sees the face most often and most frontally (its landmarks make the neutral)."""
    best, best_score = 0, -np.inf
    for k, array in enumerate(store.arrays):
        rows = evenly(np.flatnonzero(seen[:, k]), 50)
        if not len(rows):
            continue
        points = np.asarray(array[rows], np.float64)
        # Frontal: the nose tip midway between the face's sides (landmarks 234, 454) in the image.
        sides = points[:, [234, 454], 0]
        balance = np.abs((points[:, 1, 0] - sides[:, 0]) / np.maximum(sides[:, 1] - sides[:, 0], 1e-6) - 0.5)
        score = len(np.flatnonzero(seen[:, k])) / len(seen) - 2 * float(np.median(balance))
        if score > best_score:
            best, best_score = k, score
    return best


class LandmarkStore:
    """Every camera's landmark array in the cache, read by frame rows: ``(B, C, 478, 3)`` float64, NaN: no face."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self.arrays = list(arrays)  # one (N, 478, 3) array (memory map or in memory) per camera

    def read(self, rows: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(array[rows], np.float64) for array in self.arrays], 1)


def initial_poses(store: LandmarkStore, seen: np.ndarray, records: Sequence[CameraRecord],
                  template: ActorTemplate, rows: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``(len(rows), 6)`` closed-form poses, each from the camera in which that frame's face is largest."""
    pose = np.zeros((len(rows), 6))
    vertices = template.template.vertices.astype(np.float64)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        points = store.read(part)  # (B, C, L, 3)
        heights = np.where(seen[part], face_heights(points), -1.0)
        best = heights.argmax(1)
        for k, record in enumerate(records):
            mine = np.flatnonzero((best == k) & seen[part, k])
            if len(mine):
                pose[start + mine] = initial_pose(points[mine, k], vertices, np.array(record.K), np.array(record.R),
                                                  np.array(record.t))
    return pose


def _tracker(template: ActorTemplate, records: Sequence[CameraRecord], settings: FitSettings) -> HeadTracker:
    normals = vertex_normals(torch.from_numpy(template.template.vertices),
                             torch.from_numpy(template.template.triangles))[0].numpy()
    return HeadTracker(template.template.vertices, template.blend_basis, RigCameras.from_records(list(records)),
                       settings, normals=normals)


def fit_tracking(store: LandmarkStore, seen: np.ndarray, records: Sequence[CameraRecord], template: ActorTemplate,
                 settings: FitSettings, progress: Progress, rows: np.ndarray | None = None) -> FitResult:
    """Pose and blend weights of every frame (or of ``rows`` only, e.g. for the focal search)."""
    tracker = _tracker(template, records, settings)
    rows = np.arange(len(seen)) if rows is None else rows
    init = initial_poses(store, seen, records, template, rows)

    def landmarks(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return store.read(rows[start:stop]), seen[rows[start:stop]]

    return tracker.fit(landmarks, len(rows), init, progress)


def choose_focal(store: LandmarkStore, seen: np.ndarray, record: CameraRecord,
                 template: ActorTemplate, settings: FitSettings) -> tuple[CameraRecord, dict[str, float]]:
    """For one uncalibrated camera: the focal length among :data:`FOCAL_CANDIDATES` that fits landmarks best."""
    rows = evenly(np.flatnonzero(seen[:, 0]), FOCAL_SAMPLE)
    side = max(record.width, record.height)
    errors: dict[str, float] = {}
    best, best_error = record, np.inf
    quiet = settings.without_smoothing()
    for multiple in FOCAL_CANDIDATES:
        K = np.array(record.K, np.float64)
        K[0, 0] = K[1, 1] = multiple * side
        candidate = CameraRecord(record.name, K.tolist(), record.R, record.t, record.width, record.height)
        result = fit_tracking(store, seen, [candidate], template, quiet, lambda *a: None, rows)
        error = float(np.nanmedian(result.rms / result.face_height))
        errors[f"{multiple:g}"] = error
        if error < best_error:
            best, best_error = candidate, error
    return best, errors


def triangulate_template(store: LandmarkStore, seen: np.ndarray, records: Sequence[CameraRecord],
                         template: ActorTemplate, settings: FitSettings) -> ActorTemplate:
    """Several cameras see the face's depth that one FaceMesh guesses: re-fit the rest shape to all of them.

    Rounds of (fit poses and weights on a sample of frames, then re-triangulate every vertex with those held).
    """
    rows = evenly(np.arange(len(seen)), SHAPE_SAMPLE)
    rows = rows[seen[rows].any(1)]
    apart = settings.without_smoothing()
    for _ in range(SHAPE_ROUNDS):
        fit = fit_tracking(store, seen, records, template, apart, lambda *a: None, rows)
        tracker = _tracker(template, records, settings)
        rest = refine_rest_shape(tracker, store.read(rows), seen[rows], fit.pose, fit.blend_weights)
        template = with_rest_shape(template, rest)
    return template
