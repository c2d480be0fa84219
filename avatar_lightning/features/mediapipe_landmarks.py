"""``mediapipe``: FaceMesh landmarks with head pose and scale removed, the offline expression features.

MediaPipe FaceMesh (with ``refine_landmarks``: 468 mesh points + 10 iris points = 478) runs in tracking mode
on the full frame (its own face detector and region tracking are the crop; its models ship inside the wheel,
so this works offline everywhere). Each frame's 3-D landmarks (x, y in pixels, z in pixel-scaled relative
depth, MediaPipe's convention: x right, y down, z away from the camera) are aligned to a fixed reference by a
similarity Procrustes fit (rotation, translation, isotropic scale) on :data:`RIGID_LANDMARKS`, points that
expression hardly moves (forehead, nose ridge, temples, eye corners). What is left is expression (and the
person's face shape; ``relative="capture"`` subtracts the mean shape, see ``features.extract``).

Vector layout, ``features/mediapipe`` ``(N, 1434) float32``: landmark ``i`` (MediaPipe's index, 0..477; 468..477
are the iris centres and rims) at columns ``3i, 3i+1, 3i+2`` = x, y, z in the reference frame: x towards the
image right (the face's left), y down (forehead to chin), z away from the camera, origin at the centroid of
the rigid landmarks, unit = their RMS distance from it. The reference is the frontalised FaceMesh of
scikit-image's bundled ``astronaut`` photo (computed once per process; nothing is downloaded).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar_lightning.features.base import FeatureBatch, FeatureExtractor, FeatureOutput, check_frames
from avatar_lightning.quiet import native_stderr_filtered

NUM_LANDMARKS = 478
FEATURE_DIM = 3 * NUM_LANDMARKS
# Points that move little with expression: forehead, nose ridge and tip, temples, upper cheeks, eye corners.
RIGID_LANDMARKS = (
    10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1,  # midline: forehead to nose tip
    109, 338, 67, 297, 108, 337, 69, 299, 104, 333,  # forehead
    127, 356, 162, 389, 21, 251, 54, 284, 103, 332, 234, 454,  # temples and the face's sides at ear level
    33, 263, 133, 362,  # outer and inner eye corners
)
RIGHT_EYE_OUTER, LEFT_EYE_OUTER, FOREHEAD, CHIN = 33, 263, 10, 152
LAYOUT = (
    "478 FaceMesh landmarks (468 mesh + 10 iris, MediaPipe's indices), columns 3i..3i+2 = x, y, z of landmark i "
    "after a similarity Procrustes fit to a frontal reference on the rigid landmarks: x image-right, y down, "
    "z away from the camera; origin at the rigid landmarks' centroid, unit = their RMS radius"
)


class FaceMeshTracker:
    """MediaPipe FaceMesh on a stream of frames; the graph is built lazily in the process that uses it.

    In tracking mode (``static=False``) FaceMesh re-detects only when it loses the face, so frames must come
    in order; :meth:`reset` starts a new stream. The graph cannot be pickled, so it is dropped on pickling
    (DDP spawn, DataLoader workers) and rebuilt on first use.

    Args:
        static: detect in every frame independently (photos) instead of tracking.
        min_detection_confidence, min_tracking_confidence: MediaPipe's thresholds.
    """

    def __init__(self, static: bool = False, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5) -> None:
        self.static = static
        self.min_detection_confidence = min_detection_confidence
        self.min_tracking_confidence = min_tracking_confidence
        self._mesh: Any = None
        self._warm = False  # MediaPipe's native start-up lines come with the first frame, then never again

    def _build(self) -> Any:
        import mediapipe as mp

        with warnings.catch_warnings():  # protobuf's deprecation notice from inside mediapipe
            warnings.simplefilter("ignore", UserWarning)
            return mp.solutions.face_mesh.FaceMesh(
                static_image_mode=self.static, max_num_faces=1, refine_landmarks=True,
                min_detection_confidence=self.min_detection_confidence,
                min_tracking_confidence=self.min_tracking_confidence,
            )

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """Landmarks ``(478, 3) float64`` of the face in ``image (H, W, 3) uint8`` RGB, in pixels; None if none.

        x, y are pixel coordinates (pixel centres at +0.5), z relative depth in the same pixel scale as x.
        """
        height, width = image.shape[:2]
        with native_stderr_filtered() if not self._warm else contextlib.nullcontext():
            if self._mesh is None:
                self._mesh = self._build()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                result = self._mesh.process(np.ascontiguousarray(image))
            self._warm = True
        if not result.multi_face_landmarks:
            return None
        points = np.array([(p.x, p.y, p.z) for p in result.multi_face_landmarks[0].landmark], dtype=np.float64)
        return points * np.array([width, height, width])

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None
        self._warm = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mesh": None, "_warm": False}


def track_landmarks(frames: Iterable[np.ndarray], count: int, sequence_starts: Iterable[int] = (0,),
                    progress: Callable[[str, int, int], None] | None = None, what: str = "FaceMesh"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """FaceMesh in tracking mode over ``count`` frames in order (reset at every sequence start).

    Returns landmarks ``(count, 478, 3)`` in pixels, NaN where no face, and ``valid (count,)``; memory grows only
    by the landmarks, so ``frames`` may be a decoder's stream or a memory map.
    """
    tracker = FaceMeshTracker(static=False)
    landmarks = np.full((count, NUM_LANDMARKS, 3), np.nan)
    starts = {int(s) for s in sequence_starts}
    try:
        for i, image in enumerate(frames):
            if i in starts:
                tracker.reset()
            found = tracker(np.asarray(image))
            if found is not None:
                landmarks[i] = found
            if progress is not None and (i % 64 == 0 or i == count - 1):
                progress(what, i + 1, count)
    finally:
        tracker.close()
    return landmarks, np.isfinite(landmarks[:, 0, 0])


def similarity_transform(points: np.ndarray, reference: np.ndarray, subset: tuple[int, ...] = RIGID_LANDMARKS
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The best similarity mapping each ``points (B, L, 3)`` onto ``reference (L, 3)`` on ``subset`` (Umeyama).

    Returns ``scale (B,)``, ``rotation (B, 3, 3)`` (proper: reflections are excluded), and the subset centroids
    ``source (B, 1, 3)`` and ``target (3,)``: ``x -> scale R (x - source) + target``, least squares on the subset.
    """
    src = points[:, subset]  # (B, S, 3)
    dst = reference[list(subset)]  # (S, 3)
    src_mean, dst_mean = src.mean(1, keepdims=True), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = np.einsum("si,bsj->bij", dst_c, src_c) / len(subset)  # (B, 3, 3)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.sign(np.linalg.det(u) * np.linalg.det(vt))  # -1 would be a reflection
    d = np.ones((len(points), 3))
    d[:, 2] = sign
    rotation = u @ (d[:, :, None] * vt)  # (B, 3, 3)
    variance = (src_c**2).sum((1, 2)) / len(subset)
    scale = (singular * d).sum(1) / variance  # (B,)
    return scale, rotation, src_mean, dst_mean


def similarity_align(points: np.ndarray, reference: np.ndarray,
                     subset: tuple[int, ...] = RIGID_LANDMARKS) -> np.ndarray:
    """Map each ``points (B, L, 3)`` onto ``reference (L, 3)`` by the best similarity on ``subset``.

    Rotation, translation and isotropic scale are fitted in the least-squares sense on the subset
    (:func:`similarity_transform`) and applied to all L points.
    """
    scale, rotation, src_mean, dst_mean = similarity_transform(points, reference, subset)
    return scale[:, None, None] * np.einsum("bij,blj->bli", rotation, points - src_mean) + dst_mean


@lru_cache(maxsize=1)
def reference_landmarks() -> np.ndarray:
    """The frontal reference ``(478, 3)``: the astronaut's FaceMesh, rotated upright, unit RMS rigid radius."""
    from skimage import data

    tracker = FaceMeshTracker(static=True)
    points = tracker(data.astronaut())
    tracker.close()
    if points is None:  # pragma: no cover - would mean a broken mediapipe install
        raise RuntimeError("MediaPipe FaceMesh found no face in skimage.data.astronaut(); check the mediapipe install")
    x_axis = points[LEFT_EYE_OUTER] - points[RIGHT_EYE_OUTER]
    x_axis /= np.linalg.norm(x_axis)
    y_axis = points[CHIN] - points[FOREHEAD]
    y_axis -= x_axis * (y_axis @ x_axis)
    y_axis /= np.linalg.norm(y_axis)
    rotation = np.stack([x_axis, y_axis, np.cross(x_axis, y_axis)])  # rows: the new axes
    rigid = list(RIGID_LANDMARKS)
    centred = (points - points[rigid].mean(0)) @ rotation.T
    radius = np.sqrt((centred[rigid] ** 2).sum(1).mean())
    return centred / radius


class MediaPipeLandmarks(FeatureExtractor):
    """``mediapipe``: pose- and scale-free FaceMesh landmarks, ``(B, 1434)`` (layout in the module docstring).

    Runs on the CPU in the calling process, frame after frame (FaceMesh tracks), whatever the accelerator.

    Args:
        fps: frame rate (unused; FaceMesh tracks per frame).
        min_detection_confidence, min_tracking_confidence: MediaPipe's thresholds.
    """

    name = "mediapipe"
    uses_accelerator = False

    def __init__(self, fps: float = 25.0, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5) -> None:
        super().__init__(fps)
        self.tracker = FaceMeshTracker(False, min_detection_confidence, min_tracking_confidence)
        self.reference = reference_landmarks()

    @property
    def outputs(self) -> tuple[FeatureOutput, ...]:
        return (FeatureOutput("mediapipe", FEATURE_DIM, LAYOUT),)

    def landmarks(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw landmarks ``(B, 478, 3)`` in pixels (zero where no face) and ``valid (B,)``, frame by frame."""
        points = np.zeros((len(frames), NUM_LANDMARKS, 3))
        valid = np.zeros(len(frames), dtype=bool)
        for i, image in enumerate(frames):
            found = self.tracker(image)
            if found is not None:
                points[i], valid[i] = found, True
        return points, valid

    def forward(self, frames: Tensor) -> FeatureBatch:
        check_frames(frames)
        points, valid = self.landmarks(frames.cpu().numpy())
        features = np.zeros((len(frames), FEATURE_DIM), dtype=np.float32)
        if valid.any():
            aligned = similarity_align(points[valid], self.reference)  # (V, 478, 3)
            features[valid] = aligned.reshape(len(aligned), -1)
        return FeatureBatch({"mediapipe": torch.from_numpy(features)}, torch.from_numpy(valid))

    def reset(self) -> None:
        self.tracker.reset()

    def describe(self) -> dict[str, Any]:
        return {"extractor": self.name, "landmarks": NUM_LANDMARKS,
                "alignment": f"similarity Procrustes on {len(RIGID_LANDMARKS)} rigid landmarks (RIGID_LANDMARKS)",
                "reference": "skimage.data.astronaut() FaceMesh, frontalised",
                "min_detection_confidence": self.tracker.min_detection_confidence,
                "min_tracking_confidence": self.tracker.min_tracking_confidence}
