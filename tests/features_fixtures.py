"""Building blocks for the feature and ingest tests: a real face photo, warps of it, small caches and videos.

The face is scikit-image's bundled ``astronaut`` photo (always present, nothing downloaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from avatar_lightning.cache import CameraRecord, CaptureCache, SequenceRecord

# The astronaut's head lies inside this square of the 512 x 512 photo (x0, y0, side).
HEAD_SQUARE = (70, 0, 320)


@lru_cache(maxsize=1)
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # (512, 512, 3) uint8 RGB


def face_image(size: int = 192) -> np.ndarray:
    """The astronaut's head, square, ``(size, size, 3) uint8``."""
    x0, y0, side = HEAD_SQUARE
    return cv2.resize(astronaut()[y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=cv2.INTER_AREA)


def rotate_scale(image: np.ndarray, degrees: float, scale: float, shift: tuple[float, float] = (0, 0)) -> np.ndarray:
    """A rigid in-plane rotation and scale of ``image`` about its centre (borders reflected)."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, scale)
    matrix[:, 2] += shift
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def open_mouth(image: np.ndarray, mouth: tuple[float, float], amount: float, width: float) -> np.ndarray:
    """Pull the region below ``mouth`` (x, y pixels) down by up to ``amount`` pixels: a jaw-drop-like warp."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    below = yy - mouth[1]
    falloff = np.clip(below / (0.15 * width), 0, 1) * np.exp(-np.clip(below - width, 0, None) / (0.7 * width))
    across = np.exp(-(((xx - mouth[0]) / width) ** 2))
    map_y = (yy - amount * falloff * across).astype(np.float32)
    return cv2.remap(image, xx, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def blank(size: int = 192, value: int = 128) -> np.ndarray:
    """A frame without a face."""
    return np.full((size, size, 3), value, dtype=np.uint8)


def frames_cache(root: Path, frames: np.ndarray, sequences: Sequence[SequenceRecord] | None = None,
                 camera: str = "front", fps: float = 25.0) -> CaptureCache:
    """A cache holding only ``frames (N, H, W, 3) uint8`` of one camera (one test sequence by default)."""
    n, h, w = frames.shape[:3]
    sequences = sequences or [SequenceRecord("clip", 0, n - 1, "test")]
    K = [[1.2 * w, 0.0, w / 2], [0.0, 1.2 * w, h / 2], [0.0, 0.0, 1.0]]
    cam = CameraRecord(camera, K, np.eye(3).tolist(), [0.0, 0.0, 0.0], w, h)
    cache = CaptureCache.create(root, fps=fps, num_frames=n, sequences=sequences, cameras=[cam])
    cache.write_array(f"cameras/{camera}/frames", frames, stage="test-fixture", per_frame=True)
    return cache


def moving_face_frames(n: int, size: int = 192) -> np.ndarray:
    """``n`` frames of the face drifting slowly (translation and a small rotation): a short clip."""
    face = face_image(size)
    t = np.linspace(0, 1, n)
    return np.stack([rotate_scale(face, 6 * np.sin(2 * np.pi * s), 1.0, (8 * s, -4 * s)) for s in t])


def write_timed_video(path: Path, frames: np.ndarray, times_ms: Sequence[int]) -> Path:
    """An H.264 file whose frame ``j`` is presented at ``times_ms[j]``: any spacing, so a variable frame rate."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=50)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for image, time in zip(frames, times_ms, strict=True):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = int(time), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def random_deca_checkpoint(folder: Path) -> Path:
    """A randomly initialised DECA encoder saved in the layout of DECA's ``deca_model.tar``."""
    import torch

    from avatar_lightning.features.deca import DecaEncoder, save_deca_checkpoint

    torch.manual_seed(0)
    return save_deca_checkpoint(folder / "deca_model.tar", DecaEncoder())
