"""``tracked_blend``: each person's own 17 blend weights per frame, fitted by ``prepare``'s tracker.

Why: the landmark features carry the person's face shape and way of moving into the animator, and the
blendshape model reads a rendered synthetic face on another scale than a real one. Here every person, actor
and driver alike, goes through the same estimator: FaceMesh landmarks -> the person's *own* neutral template
(:func:`capture.template.build_actor_template`, the calmest frames) with the project's 17 semantic blend shapes
-> pose and blend weights fitted per frame (:class:`capture.fitting.HeadTracker`, with the focal length search
of a monocular ``prepare``). The weights say what a face does relative to its own neutral, in the same basis the
actor's head model uses. Measured on real drivers, applying them to the actor's mesh directly follows the driver
at mean r 0.60 (d0, big head turns) to 0.84 (d3), against 0.37-0.73 for the landmark animators
(``benchmarks/transfer_grid.py``).

The price: the neutral is taken from the whole sequence (not causal), and the fit runs over the sequence, so
this extractor is not a per-frame :class:`FeatureExtractor`; ``features`` runs it in one process (no device
spread). Layout, ``features/tracked_blend`` ``(N, 17) float32``: :data:`synth.blendshapes.BLEND_SHAPE_NAMES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from avatar_lightning.cache import CacheError, CameraRecord
from avatar_lightning.features.mediapipe_landmarks import NUM_LANDMARKS, FaceMeshTracker

NAME = "tracked_blend"
Progress = Callable[[str, int, int], None]


class _Landmarks:
    """The landmark store ``prepare``'s fitting reads (``read(rows) -> (B, 1, 478, 3)``, NaN: no face), in memory."""

    def __init__(self, landmarks: np.ndarray) -> None:
        self.arrays = [landmarks]

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.arrays[0][rows][:, None]


def track_landmarks(frames: Any, sequence_starts: Sequence[int], progress: Progress | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """FaceMesh over ``frames (N, H, W, 3)`` in order (reset at every sequence start): ``(N, 478, 3)``, valid."""
    tracker = FaceMeshTracker(static=False)
    n = len(frames)
    landmarks = np.full((n, NUM_LANDMARKS, 3), np.nan)
    starts = set(int(s) for s in sequence_starts)
    try:
        for i in range(n):
            if i in starts:
                tracker.reset()
            found = tracker(np.asarray(frames[i]))
            if found is not None:
                landmarks[i] = found
            if progress is not None and (i % 64 == 0 or i == n - 1):
                progress("FaceMesh", i + 1, n)
    finally:
        tracker.close()
    return landmarks, np.isfinite(landmarks[:, 0, 0])


def fit_blend_weights(landmarks: np.ndarray, valid: np.ndarray, width: int, height: int,
                      progress: Progress | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The person's own template and per-frame blend weights ``(N, 17)`` from its landmarks (pixels)."""
    from avatar_lightning.capture import calibration as calib
    from avatar_lightning.capture.fitting import FitSettings
    from avatar_lightning.capture.prepare import TEMPLATE_SAMPLE, choose_focal, evenly, fit_tracking
    from avatar_lightning.capture.template import build_actor_template

    if not valid.any():
        raise CacheError("FaceMesh found no face in any frame: no blend weights can be fitted")
    store = _Landmarks(landmarks)
    seen = valid[:, None]
    template = build_actor_template(landmarks[evenly(np.flatnonzero(valid), TEMPLATE_SAMPLE)])
    record = CameraRecord("cam0", calib.default_intrinsics(width, height), np.eye(3).tolist(), [0.0, 0.0, 0.0],
                          width, height)
    settings = FitSettings()
    record, focal_search = choose_focal(store, seen, record, template, settings)
    fit = fit_tracking(store, seen, [record], template, settings, progress or (lambda *a: None))
    report = {"frames_in_neutral": template.frames_used, "focal_px": record.K[0][0],
              "median_reprojection_fraction": float(np.nanmedian(fit.rms[:, 0] / fit.face_height[:, 0]))
              if np.isfinite(fit.rms).any() else None}
    return fit.blend_weights.astype(np.float32), report
