"""A clean plate per camera (the empty background I_backg of eq. 1): given, or estimated from the capture.

Estimated as the per-pixel temporal median of sampled frames with the actor's head masked out: the fitted face
mesh's outline, widened to cover hair, ears and the neck. Below the face that mask also covers the torso, which in
a monocular clip is often held still: there, a pixel that does not change over the sampled frames is background
(a shirt and tie that never move come back as themselves, not as an inpainted patch). Only pixels the head covers
in every sampled frame and that do change were never seen; they are inpainted from their surroundings (OpenCV's
Telea method), a warning gives their share, and the re-render U-Net's learned mask has to carry them. A real clean
plate (the studio filmed without the actor) is better: pass it with ``--clean-plate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatar_lightning.errors import CacheError

# The head mask: the face outline scaled about its centre (hair and ears), extended up (crown) and down (neck).
HEAD_SCALE = 1.5
CROWN_EXTENT = 0.45  # of the face height, above the outline
NECK_EXTENT = 0.7  # of the face height, below the chin
# Below the face, a pixel whose sampled values spread less than this (standard deviation, 8-bit levels, the largest
# of its three channels) never moved: background, however often the mask covered it. Video noise is 1-3 levels.
STATIC_STD = 4.0


@dataclass(frozen=True)
class PlateEstimate:
    """``plate (H, W, 3) uint8``; the share of its pixels that no sampled frame showed (inpainted), and the share
    the head mask covered in every frame but that never changed (kept as background)."""

    plate: np.ndarray
    unseen_fraction: float
    frames_used: int
    static_fraction: float = 0.0


def head_mask(points: np.ndarray, width: int, height: int, neck: bool = True) -> np.ndarray:
    """``(H, W) bool``: where the head may be, from its projected face vertices ``(V, 2)`` in pixels; ``neck``: also
    the region below the chin (neck, and often the torso)."""
    mask = np.zeros((height, width), np.uint8)
    finite = points[np.isfinite(points).all(1)]
    if len(finite) < 3:
        return mask.astype(bool)
    centre = finite.mean(0)
    face_height = np.ptp(finite[:, 1])
    grown = centre + (finite - centre) * HEAD_SCALE
    crown = grown - [0.0, CROWN_EXTENT * face_height]
    parts = [grown, crown]
    if neck:
        parts.append(finite[finite[:, 1] > centre[1]] + [0.0, NECK_EXTENT * face_height])
    hull = cv2.convexHull(np.concatenate(parts).astype(np.float32))
    cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1)
    return mask.astype(bool)


def estimate_plate(frames: np.ndarray, masks: np.ndarray, heads: np.ndarray | None = None) -> PlateEstimate:
    """Median of ``frames (S, H, W, 3) uint8`` where ``masks (S, H, W)`` (True: head) leave the background visible.

    ``heads (S, H, W)``: the masks without the neck (:func:`head_mask` with ``neck=False``). Outside them, a pixel
    the masks hide in every frame but whose values never change is background: its median over all frames.
    """
    data = np.ma.masked_array(frames, mask=np.broadcast_to(masks[..., None], frames.shape))
    median = np.ma.median(data, axis=0)
    unseen = np.ma.getmaskarray(median).any(-1)
    plate = np.ma.filled(median, 0).round().astype(np.uint8)
    static = np.zeros_like(unseen)
    if heads is not None and unseen.any():
        still = frames.astype(np.float32).std(axis=0).max(-1) < STATIC_STD
        static = unseen & still & ~heads.any(0)
        plate[static] = np.median(frames[:, static], axis=0).round().astype(np.uint8)
        unseen = unseen & ~static
    if unseen.any():
        plate = cv2.inpaint(plate, unseen.astype(np.uint8), 5, cv2.INPAINT_TELEA)
    return PlateEstimate(plate=plate, unseen_fraction=float(unseen.mean()), frames_used=len(frames),
                         static_fraction=float(static.mean()))


def load_plate(path: str | Path, width: int, height: int) -> np.ndarray:
    """A clean-plate image file (PNG, JPEG, ...) as ``(H, W, 3) uint8`` RGB; its size must be the camera's, or a
    larger one of the same aspect (the video file's, when prepare scaled its frames down), which is scaled alike."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"clean plate {path} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise CacheError(f"clean plate {path} is not a readable image (PNG, JPEG, ...)")
    h, w = image.shape[:2]
    if (h, w) != (height, width) and h >= height and w >= width and abs(w / h - width / height) < 0.01 * width / height:
        # the plate at the video file's size while prepare scaled the frames down (--max-side): scale it alike
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if image.shape[:2] != (height, width):
        raise CacheError(f"clean plate {path} is {image.shape[1]}x{image.shape[0]} but its camera's frames are "
                         f"{width}x{height}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
