"""Face crops for image encoders (DECA) and driving-video ingest: detect, square box with margin, smooth, resize.

The box follows DECA's test-time crop (``decalib/datasets/datasets.py``, ``TestData`` with FAN's 68 landmarks):
the bounding box of the iBUG-68 landmark extent, its side ``(width + height) / 2 * 1.1``, centred on the box,
enlarged by ``scale = 1.25``. Here the 68-point extent is taken from the FaceMesh points that lie where the
68 points do (jaw contour and eyebrows; FaceMesh also covers the forehead, which FAN's 68 points do not).

Boxes are smoothed over time with a One Euro filter (Casiez et al. 2012): a low-pass whose cut-off rises with
speed, so a still head gives a still crop (no jitter) and a moving one is followed without visible lag. It is
causal, so it runs while frames stream through (ingest, Lightning predict). A frame without a face keeps the
last box; before the first face the crop is the centred square of the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from avatar_lightning.features.mediapipe_landmarks import FaceMeshTracker

DECA_SCALE = 1.25  # TestData(scale=1.25)
KPT68_ENLARGE = 1.1  # bbox2point(type="kpt68"): old_size = (w + h) / 2 * 1.1
# FaceMesh points on the iBUG-68 outline: the jaw contour (68-points 0..16) and the eyebrows (17..26).
JAW_CONTOUR = (127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361,
               323, 454, 356)
EYEBROWS = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46, 336, 296, 334, 293, 300, 285, 295, 282, 283, 276)
BOX_LANDMARKS = JAW_CONTOUR + EYEBROWS


def landmark_box(landmarks: np.ndarray, scale: float = DECA_SCALE) -> np.ndarray:
    """DECA's square crop box ``(3,)`` = centre x, centre y, side (pixels) from FaceMesh landmarks ``(L, >=2)``."""
    points = landmarks[list(BOX_LANDMARKS), :2]
    left, top = points.min(0)
    right, bottom = points.max(0)
    side = ((right - left) + (bottom - top)) / 2 * KPT68_ENLARGE * scale
    return np.array([(left + right) / 2, (top + bottom) / 2, side])


def centre_box(width: int, height: int) -> np.ndarray:
    """The largest centred square: the crop when no face has been seen yet."""
    return np.array([width / 2, height / 2, float(min(width, height))])


def crop_square(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Resample the square ``box`` (centre x, centre y, side; pixels) of ``image (H, W, 3)`` to ``(size, size, 3)``.

    Bilinear (area-averaging when shrinking by more than 2x); outside the image is black, as in DECA's warp.
    Pixel centres are at +0.5: the box's edges map to the output's edges.
    """
    cx, cy, side = (float(v) for v in box)
    scale = size / side
    if scale < 0.5:  # pre-shrink so bilinear sampling does not alias
        factor = int(1 / scale) // 2 * 2 or 1
        small = cv2.resize(image, (max(1, image.shape[1] // factor), max(1, image.shape[0] // factor)),
                           interpolation=cv2.INTER_AREA)
        sx, sy = image.shape[1] / small.shape[1], image.shape[0] / small.shape[0]
        return crop_square(small, np.array([cx / sx, cy / sy, side / (sx + sy) * 2]), size)
    # out = scale * (in - (c - side/2)) in continuous coordinates; OpenCV's pixel centres are at integers.
    shift_x = scale * (side / 2 - cx) + 0.5 * scale - 0.5
    shift_y = scale * (side / 2 - cy) + 0.5 * scale - 0.5
    matrix = np.array([[scale, 0.0, shift_x], [0.0, scale, shift_y]])
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


class OneEuroFilter:
    """The One Euro filter on a vector (Casiez, Roussel, Vogel 2012): adaptive low-pass for noisy tracks.

    ``cutoff = min_cutoff + beta * |speed| / speed_scale`` (Hz), speed from the low-passed derivative; with the
    box side as ``speed_scale`` of its centre, ``beta`` is per "box sides per second".

    Args:
        fps: sampling rate (Hz).
        min_cutoff: cut-off when still (Hz): lower removes more jitter.
        beta: how fast the cut-off rises with speed: higher follows motion with less lag.
        derivative_cutoff: cut-off of the speed estimate (Hz).
    """

    def __init__(self, fps: float, min_cutoff: float = 1.0, beta: float = 2.0, derivative_cutoff: float = 1.0) -> None:
        self.dt = 1.0 / fps
        self.min_cutoff, self.beta, self.derivative_cutoff = min_cutoff, beta, derivative_cutoff
        self.value: np.ndarray | None = None
        self.speed: np.ndarray | None = None

    def _alpha(self, cutoff: np.ndarray | float) -> np.ndarray | float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / self.dt)

    def __call__(self, x: np.ndarray, speed_scale: np.ndarray | float = 1.0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.value is None or self.speed is None:
            self.value, self.speed = x.copy(), np.zeros_like(x)
            return self.value.copy()
        raw_speed = (x - self.value) / self.dt
        a = self._alpha(self.derivative_cutoff)
        self.speed = a * raw_speed + (1 - a) * self.speed
        cutoff = self.min_cutoff + self.beta * np.abs(self.speed) / speed_scale
        a = self._alpha(cutoff)
        self.value = a * x + (1 - a) * self.value
        return self.value.copy()

    def reset(self) -> None:
        self.value = self.speed = None


@dataclass(frozen=True)
class FaceCrop:
    """One frame's crop: ``image (size, size, 3) uint8``, the smoothed ``box`` (cx, cy, side) in source pixels,
    whether a face was ``found`` in this frame, and its raw ``landmarks (478, 3)`` (None if not found)."""

    image: np.ndarray
    box: np.ndarray
    found: bool
    landmarks: np.ndarray | None


class FaceCropper:
    """Stateful face cropper for a stream of frames: FaceMesh tracking, DECA's box, One Euro smoothing, resize.

    Feed frames in order; :meth:`reset` at a cut.

    Args:
        size: output side in pixels (224 for DECA).
        fps: the stream's frame rate (smoothing is specified in seconds).
        scale: box enlargement over the 68-point extent (DECA: 1.25).
        min_cutoff, beta: One Euro settings (see :class:`OneEuroFilter`).
    """

    def __init__(self, size: int = 224, fps: float = 25.0, scale: float = DECA_SCALE, min_cutoff: float = 1.0,
                 beta: float = 2.0) -> None:
        self.size, self.scale = size, scale
        self.tracker = FaceMeshTracker()
        self.filter = OneEuroFilter(fps, min_cutoff=min_cutoff, beta=beta)
        self.last_box: np.ndarray | None = None

    def __call__(self, image: np.ndarray) -> FaceCrop:
        """Crop ``image (H, W, 3) uint8`` RGB around the face."""
        landmarks = self.tracker(image)
        if landmarks is not None:
            raw = landmark_box(landmarks, self.scale)
            # Smooth the log of the side (zooming in and out are symmetric); centre speed in box sides per second.
            smooth = self.filter(np.array([raw[0], raw[1], math.log(raw[2])]),
                                 speed_scale=np.array([raw[2], raw[2], 1.0]))
            self.last_box = np.array([smooth[0], smooth[1], math.exp(smooth[2])])
        box = self.last_box if self.last_box is not None else centre_box(image.shape[1], image.shape[0])
        return FaceCrop(crop_square(image, box, self.size), box, landmarks is not None, landmarks)

    def reset(self) -> None:
        self.tracker.reset()
        self.filter.reset()
        self.last_box = None

    def close(self) -> None:
        self.tracker.close()
