"""An mp4 preview per camera of a synthetic capture, for a person's eyes (PyAV: OpenCV wheels lack H.264)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avatar_lightning.cache import CaptureCache


def write_mp4(path: Path, frames: np.ndarray, fps: float, chunk: int = 64) -> Path:
    """Encode ``frames (N, H, W, 3) uint8`` (a memory map is fine: read in chunks) as H.264, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    height, width = frames.shape[1:3]
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for start in range(0, len(frames), chunk):
            for image in np.asarray(frames[start : start + chunk]):
                frame = av.VideoFrame.from_ndarray(image[: stream.height, : stream.width], format="rgb24")
                container.mux(stream.encode(frame))
        container.mux(stream.encode())
    os.replace(tmp, path)
    return path


def write_previews(cache: CaptureCache, cameras: Sequence[str]) -> list[Path]:
    return [
        write_mp4(cache.root / "previews" / f"{name}.mp4", cache.array(f"cameras/{name}/frames"), cache.fps)
        for name in cameras
    ]
