"""Scale-free expression measures of a face from its FaceMesh landmarks: what ``score-transfer`` compares.

Each measure is a ratio of distances between landmarks after the face has been aligned to a frontal reference
(similarity Procrustes on the rigid landmarks, :func:`features.mediapipe_landmarks.similarity_align`), so head
pose, distance to the camera and image size drop out; lengths are divided by the outer eye-corner distance
(``iod``) or, for the eyes, by the eye's own width. The same functions read the avatar's mesh vertices (the
template's first 468 vertices are FaceMesh's landmarks, :mod:`synth.face`), so the chain can be scored before
rendering too.

"right" / "left" are the face's own sides (the face's right is the image left), as everywhere in the project.
Axes after alignment: x towards the image right, y down, z away from the camera.

=================  =====================================================================================
measure            per frame
=================  =====================================================================================
mouth_open         inner-lip gap at the centre (13-14) / iod
mouth_width        mouth-corner distance (61-291) / iod
eye_open_right     mean of three lid gaps (159-145, 158-153, 160-144) / that eye's width (33-133)
eye_open_left      the same on the left eye (386-374, 385-380, 387-373) / (263-362)
brow_raise_right   height of the brow (70, 63, 105, 66, 107) above the eye corners (33, 133) / iod
brow_raise_left    the same (300, 293, 334, 296, 336) above (263, 362) / iod
lip_pucker         roundness of the lips: outer lip height (0-17) / mouth width (61-291); pursed lips are
                   narrow and tall (FaceMesh's z, which protrusion would need, did not follow the synthetic
                   actor's pucker at all: r 0.02 against 0.41 for this ratio)
smile              height of the mouth corners above the upper lip's centre (0) / iod
smile_asymmetry    left corner's height minus the right corner's (61, 291) / iod
jaw_sideways       chin (152) sideways from the nose ridge (168, 6, 197, 195), to the face's left > 0, / iod
=================  =====================================================================================
"""

from __future__ import annotations

import numpy as np

MEASURES: tuple[str, ...] = (
    "mouth_open", "mouth_width", "eye_open_right", "eye_open_left", "brow_raise_right", "brow_raise_left",
    "lip_pucker", "smile", "smile_asymmetry", "jaw_sideways",
)
#: The seven measures of the first transfer check (issue 16); the summary's mean runs over all of MEASURES.
CORE_MEASURES: tuple[str, ...] = MEASURES[:7]
NUM_FACEMESH_POINTS = 468  # measures use only the mesh points, not the iris ones

_RIGHT_EYE_CORNERS, _LEFT_EYE_CORNERS = (33, 133), (263, 362)
_RIGHT_LIDS = ((159, 145), (158, 153), (160, 144))
_LEFT_LIDS = ((386, 374), (385, 380), (387, 373))
_RIGHT_BROW, _LEFT_BROW = (70, 63, 105, 66, 107), (300, 293, 334, 296, 336)
_MOUTH_CORNERS = (61, 291)
_NOSE_RIDGE, _CHIN, _UPPER_LIP_CENTRE = (168, 6, 197, 195), 152, 0


def _distance(points: np.ndarray, a: int, b: int) -> np.ndarray:
    return np.linalg.norm(points[:, a] - points[:, b], axis=-1)


def expression_measures(aligned: np.ndarray) -> np.ndarray:
    """``(B, len(MEASURES))`` float64 measures of landmarks ``aligned (B, L >= 468, 3)`` (pose removed).

    Any similarity-aligned frame works (the ratios are scale-free); rows are NaN where the input is.
    """
    points = np.asarray(aligned, dtype=np.float64)
    if points.ndim != 3 or points.shape[1] < NUM_FACEMESH_POINTS or points.shape[2] != 3:
        raise ValueError(f"landmarks must be (B, >= {NUM_FACEMESH_POINTS}, 3), got {list(points.shape)}")
    x, y = points[..., 0], points[..., 1]
    iod = _distance(points, _RIGHT_EYE_CORNERS[0], _LEFT_EYE_CORNERS[0])

    def eye_open(lids: tuple[tuple[int, int], ...], corners: tuple[int, int]) -> np.ndarray:
        gaps = np.mean([_distance(points, upper, lower) for upper, lower in lids], axis=0)
        return gaps / _distance(points, *corners)

    def brow_raise(brow: tuple[int, ...], corners: tuple[int, int]) -> np.ndarray:
        return (y[:, list(corners)].mean(1) - y[:, list(brow)].mean(1)) / iod

    right_corner, left_corner = _MOUTH_CORNERS
    columns = {
        "mouth_open": _distance(points, 13, 14) / iod,
        "mouth_width": _distance(points, right_corner, left_corner) / iod,
        "eye_open_right": eye_open(_RIGHT_LIDS, _RIGHT_EYE_CORNERS),
        "eye_open_left": eye_open(_LEFT_LIDS, _LEFT_EYE_CORNERS),
        "brow_raise_right": brow_raise(_RIGHT_BROW, _RIGHT_EYE_CORNERS),
        "brow_raise_left": brow_raise(_LEFT_BROW, _LEFT_EYE_CORNERS),
        "lip_pucker": _distance(points, 0, 17) / _distance(points, right_corner, left_corner),
        "smile": (y[:, _UPPER_LIP_CENTRE] - y[:, list(_MOUTH_CORNERS)].mean(1)) / iod,
        "smile_asymmetry": (y[:, right_corner] - y[:, left_corner]) / iod,
        "jaw_sideways": (x[:, _CHIN] - x[:, list(_NOSE_RIDGE)].mean(1)) / iod,
    }
    return np.stack([columns[name] for name in MEASURES], axis=1)


def measures_of_landmarks(landmarks: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Measures ``(B, M)`` of raw FaceMesh landmarks ``(B, 478, 3)`` in pixels; NaN rows where not ``valid``."""
    from avatar_lightning.features.mediapipe_landmarks import reference_landmarks, similarity_align

    landmarks = np.asarray(landmarks, dtype=np.float64)
    valid = np.ones(len(landmarks), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    out = np.full((len(landmarks), len(MEASURES)), np.nan)
    if valid.any():
        reference = reference_landmarks()[:NUM_FACEMESH_POINTS]
        aligned = similarity_align(landmarks[valid, :NUM_FACEMESH_POINTS], reference)
        out[valid] = expression_measures(aligned)
    return out
