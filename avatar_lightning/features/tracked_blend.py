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

from collections.abc import Callable
from typing import Any

import numpy as np

from avatar_lightning.cache.manifest import CameraRecord
from avatar_lightning.errors import CacheError

NAME = "tracked_blend"
Progress = Callable[[str, int, int], None]


def fit_blend_weights(landmarks: np.ndarray, valid: np.ndarray, width: int, height: int,
                      progress: Progress | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The person's own template and per-frame blend weights ``(N, 17)`` from its landmarks (pixels)."""
    from avatar_lightning.capture.fitting import FitSettings
    from avatar_lightning.capture.template import build_actor_template
    from avatar_lightning.capture.tracking import TEMPLATE_SAMPLE, LandmarkStore, choose_focal, evenly, fit_tracking
    from avatar_lightning.render.cameras import approximate_intrinsics

    if not valid.any():
        raise CacheError("FaceMesh found no face in any frame: no blend weights can be fitted")
    store = LandmarkStore([landmarks])
    seen = valid[:, None]
    template = build_actor_template(landmarks[evenly(np.flatnonzero(valid), TEMPLATE_SAMPLE)])
    record = CameraRecord("cam0", approximate_intrinsics(width, height), np.eye(3).tolist(), [0.0, 0.0, 0.0],
                          width, height)
    settings = FitSettings()
    record, focal_search = choose_focal(store, seen, record, template, settings)
    fit = fit_tracking(store, seen, [record], template, settings, progress or (lambda *a: None))
    report = {"frames_in_neutral": template.frames_used, "focal_px": record.K[0][0],
              "median_reprojection_fraction": float(np.nanmedian(fit.rms[:, 0] / fit.face_height[:, 0]))
              if np.isfinite(fit.rms).any() else None}
    return fit.blend_weights.astype(np.float32), report
