"""A driving video (mp4, mov, avi, webm, ...) -> a one-camera capture cache (the ``ingest`` command).

The cache holds one camera ``video`` (``cameras/video/frames (N, H, W, 3) uint8``), one sequence ``drive``
(split ``test``: a driving video is never trained on), the video's fps, and ``meta.source`` / ``meta.ingest``.
Optionally each frame is cropped around the face (DECA's square box, smoothed over time; the boxes are kept
in ``cameras/video/crop_boxes (N, 3)`` as centre x, centre y, side in source pixels) and resized.

Long videos stream: the file is decoded once to count and validate its frames (headers can lack or misstate
the count), then again into the frames array chunk by chunk; memory is flat in the video's length.
The cache is built in a hidden temporary folder beside ``out`` and renamed into place at the very end, so a
failure (a corrupt or truncated file, an interrupt) leaves no cache that looks complete.

The camera is not calibrated: K is an approximate pinhole (``render.cameras.approximate_intrinsics``: focal length
1.2 x the longer side, principal point at the centre); R = I, t = 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from avatar_lightning import __version__
from avatar_lightning.cache.files import check_output_folder, staged_folder
from avatar_lightning.cache.layout import crop_boxes_array, frames_array
from avatar_lightning.cache.manifest import CameraRecord, SequenceRecord
from avatar_lightning.cache.pages import release_pages
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError
from avatar_lightning.render.cameras import approximate_intrinsics
from avatar_lightning.video import DecodeStats, VideoError, iter_frames, probe_video, scan_video

STAGE = "ingest"
CAMERA = "video"
SEQUENCE = "drive"
GENERATOR = "avatar_lightning.stages.ingest"  # what caches record as their maker (kept when the code moved)
Progress = Callable[[str, int, int], None]


def frame_rate_note(scanned: DecodeStats, fps: float) -> dict[str, object]:
    """How the video's timing was kept: constant, or resampled to ``fps`` (what ``meta.ingest`` records)."""
    return {"variable": scanned.variable_rate, "fps": fps, "frames_decoded": scanned.decoded,
            "ticks_repeated": scanned.repeated, "frames_dropped": scanned.dropped}


def output_size(width: int, height: int, crop: bool, size: int | None) -> tuple[int, int]:
    """Frame size in the cache: ``size`` square when cropping, else the longer side scaled to ``size``."""
    if crop:
        return (size or 512,) * 2
    if size is None:
        return width, height
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _frames(video: Path, width: int, height: int, crop: bool, fps: float, boxes: np.ndarray | None,
            strict: bool) -> Iterator[np.ndarray]:
    """Decoded frames, cropped around the face and/or resized to ``(height, width, 3)``; boxes filled in place."""
    cropper = None
    if crop:
        from avatar_lightning.features.crop import FaceCropper

        cropper = FaceCropper(size=width, fps=fps)
    try:
        for i, frame in enumerate(iter_frames(video, strict=strict)):
            if cropper is not None:
                result = cropper(frame)
                assert boxes is not None
                boxes[i] = result.box
                yield result.image
            elif frame.shape[:2] != (height, width):
                shrink = width < frame.shape[1]
                yield cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            else:
                yield frame
    finally:
        if cropper is not None:
            cropper.close()


def ingest_video(video: str | Path, out: str | Path, *, crop: bool = False, size: int | None = None,
                 overwrite: bool = False, strict: bool = True, chunk: int = 64,
                 progress: Progress | None = None) -> CaptureCache:
    """Turn ``video`` into a one-camera capture cache at ``out`` (see the module docstring); returns it.

    Raises :class:`VideoError` for a missing, unreadable, corrupt (with ``strict``: any damage FFmpeg reports)
    or truncated video and ``CacheError`` for an existing cache without ``overwrite``; in every failure ``out``
    is left as it was.
    """
    video, out = Path(video), Path(out)
    info = probe_video(video)
    check_output_folder(out, overwrite)
    if size is not None and size < 8:
        raise CacheError(f"--size must be at least 8 pixels, got {size}")
    report = progress or (lambda what, done, total: None)
    report("scan video", 0, info.expected_frames or 0)
    scanned = scan_video(video, strict=strict)
    num_frames = scanned.delivered
    report("scan video", num_frames, num_frames)
    width, height = output_size(info.width, info.height, crop, size)
    with staged_folder(out, STAGE) as staging:
        cache = CaptureCache.create(
            staging, fps=info.fps, num_frames=num_frames,
            sequences=[SequenceRecord(SEQUENCE, 0, num_frames - 1, "test")],
            cameras=[CameraRecord(name=CAMERA, K=approximate_intrinsics(width, height),
                                  R=np.eye(3).tolist(), t=[0.0, 0.0, 0.0], width=width, height=height)],
            meta={
                "source": str(video.resolve()),
                "generator": GENERATOR,
                "version": __version__,
                "ingest": {"container": info.container, "codec": info.codec, "source_size": [info.width, info.height],
                           "crop": crop, "size": size, "intrinsics": "approximate: f = 1.2 max(W, H), centred",
                           "frame_rate": frame_rate_note(scanned, info.fps)},
            },
        )
        boxes = np.zeros((num_frames, 3), dtype=np.float32) if crop else None
        written = 0
        with cache.array_writer(frames_array(CAMERA), (num_frames, height, width, 3), np.uint8, stage=STAGE,
                                per_frame=True) as frames:
            buffer: list[np.ndarray] = []
            for image in _frames(video, width, height, crop, info.fps, boxes, strict):
                if written + len(buffer) >= num_frames:
                    raise VideoError(f"{video} yielded more frames than the {num_frames} counted; did it change?")
                buffer.append(image)
                if len(buffer) == chunk:
                    frames[written : written + chunk] = np.stack(buffer)
                    release_pages(frames)  # keep RSS flat in the video's length
                    written += chunk
                    buffer.clear()
                    report("write frames", written, num_frames)
            if buffer:
                frames[written : written + len(buffer)] = np.stack(buffer)
                written += len(buffer)
            if written != num_frames:
                raise VideoError(f"{video} yielded {written} frames, {num_frames} were counted; did it change?")
            report("write frames", written, num_frames)
        if boxes is not None:
            cache.write_array(crop_boxes_array(CAMERA), boxes, stage=STAGE, per_frame=True)
    return CaptureCache(out)
