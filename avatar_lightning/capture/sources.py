"""The cameras of a capture: video files, or regions of one (``PATH@x,y,w,h``), decoded in lock-step.

A multi-view rig is often delivered as one grid video (the NeRSemble sample holds three cameras in its first
column): every distinct file is decoded once per frame and each camera slices its region out of it. Cameras
must agree on frame rate and length; a capture whose cameras disagree is refused naming them, before anything
is written. Lens distortion, when the calibration gives it, is removed here, so every later step sees pinhole
images (the cache's cameras have no distortion terms). Frames larger than ``max_side`` are then scaled down
(4K footage would make a cache of 25 MB a frame per camera while nothing downstream uses more than ~1000 px).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatar_lightning.errors import CacheError
from avatar_lightning.video import count_frames, iter_frames, probe_video

_REGION = re.compile(r"^(?P<path>.+)@(?P<x>\d+),(?P<y>\d+),(?P<w>\d+),(?P<h>\d+)$")
FPS_TOLERANCE = 1e-3  # relative


@dataclass(frozen=True)
class CameraSource:
    """One camera: a video file, optionally only the region ``(x, y, w, h)`` (pixels) of its frames."""

    path: Path
    region: tuple[int, int, int, int] | None = None

    @classmethod
    def parse(cls, spec: str) -> CameraSource:
        """``PATH`` or ``PATH@x,y,w,h`` (the region's top-left corner, width and height in pixels)."""
        match = _REGION.match(spec)
        if match is None:
            return cls(Path(spec))
        x, y, w, h = (int(match[k]) for k in "xywh")
        if w <= 0 or h <= 0:
            raise CacheError(f"camera {spec!r}: the region's width and height must be positive")
        return cls(Path(match["path"]), (x, y, w, h))

    @property
    def spec(self) -> str:
        return str(self.path) if self.region is None else f"{self.path}@{','.join(map(str, self.region))}"


@dataclass(frozen=True)
class CaptureInfo:
    """What decoding will give: one frame rate and length for all cameras, each camera's size."""

    sources: tuple[CameraSource, ...]
    fps: float
    num_frames: int
    sizes: tuple[tuple[int, int], ...]  # (width, height) per camera, as delivered (after any scaling)
    source_sizes: tuple[tuple[int, int], ...] = ()  # (width, height) per camera in the files; () = ``sizes``

    @property
    def original_sizes(self) -> tuple[tuple[int, int], ...]:
        return self.source_sizes or self.sizes


def fit_within(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """``(width, height)`` scaled down, aspect kept, so the longer side is at most ``max_side`` (None: as is)."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def probe_capture(sources: Sequence[CameraSource], max_side: int | None = None) -> CaptureInfo:
    """Validate every video end to end and check the cameras agree; decodes each distinct file once.
    With ``max_side``, cameras whose longer side exceeds it are delivered scaled down (see :func:`fit_within`).

    Raises CacheError (a VideoError for a broken file) naming the camera and what disagrees.
    """
    if not sources:
        raise CacheError("a capture needs at least one camera (--video PATH)")
    files = {source.path for source in sources}
    probed = {path: probe_video(path) for path in sorted(files)}
    counted = {path: count_frames(path) for path in sorted(files)}
    first = sources[0]
    fps, frames = probed[first.path].fps, counted[first.path]
    sizes = []
    for source in sources:
        info = probed[source.path]
        if abs(info.fps - fps) > FPS_TOLERANCE * fps:
            raise CacheError(f"cameras {first.spec!r} ({fps:g} fps) and {source.spec!r} ({info.fps:g} fps) differ "
                             "in frame rate; synchronised cameras must share one")
        if counted[source.path] != frames:
            raise CacheError(f"cameras {first.spec!r} ({frames} frames) and {source.spec!r} "
                             f"({counted[source.path]} frames) differ in length; trim them to the same frames")
        if source.region is None:
            sizes.append((info.width, info.height))
            continue
        x, y, w, h = source.region
        if x + w > info.width or y + h > info.height:
            raise CacheError(f"camera {source.spec!r}: the region ends at ({x + w}, {y + h}), outside the "
                             f"{info.width}x{info.height} frames of {source.path}")
        sizes.append((w, h))
    scaled = tuple(fit_within(w, h, max_side) for w, h in sizes)
    return CaptureInfo(tuple(sources), fps, frames, scaled, tuple(sizes) if scaled != tuple(sizes) else ())


class Undistorter:
    """Removes OpenCV lens distortion with precomputed maps; the camera matrix stays the same."""

    def __init__(self, K: np.ndarray, distortion: np.ndarray, size: tuple[int, int]) -> None:
        K_opencv = np.asarray(K, np.float64).copy()
        K_opencv[:2, 2] -= 0.5  # the project's pixel centres are at +0.5, OpenCV's at integers
        self.maps = cv2.initUndistortRectifyMap(K_opencv, np.asarray(distortion, np.float64), None, K_opencv,
                                                size, cv2.CV_16SC2)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return cv2.remap(image, *self.maps, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def iter_capture(info: CaptureInfo, undistort: Sequence[Undistorter | None] | None = None
                 ) -> Iterator[list[np.ndarray]]:
    """Per time step, one ``(H_c, W_c, 3) uint8`` RGB frame per camera, in the order of ``info.sources``:
    undistorted at the files' size (the calibration's), then scaled to ``info.sizes``."""
    paths = sorted({source.path for source in info.sources})
    decoders = [iter_frames(path) for path in paths]
    undistort = list(undistort) if undistort is not None else [None] * len(info.sources)
    for decoded in zip(*decoders, strict=True):
        by_path = dict(zip(paths, decoded, strict=True))
        views = []
        for source, fix, size in zip(info.sources, undistort, info.sizes, strict=True):
            image = by_path[source.path]
            if source.region is not None:
                x, y, w, h = source.region
                image = np.ascontiguousarray(image[y : y + h, x : x + w])
            image = fix(image) if fix is not None else image
            if (image.shape[1], image.shape[0]) != size:
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            views.append(image)
        yield views
