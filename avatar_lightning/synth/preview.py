"""An mp4 preview per camera of a synthetic capture, for a person's eyes (H.264 through PyAV)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from avatar_lightning.cache.layout import frames_array
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.video import write_video


def write_previews(cache: CaptureCache, cameras: Sequence[str]) -> list[Path]:
    """``previews/<camera>.mp4`` from the cache's frames, read in chunks (memory flat in length)."""
    return [
        write_video(cache.root / "previews" / f"{name}.mp4", cache.array(frames_array(name)), cache.fps, crf=20)
        for name in cameras
    ]
