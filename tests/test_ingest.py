"""Driving-video ingest: containers round trip, crop/resize, streaming, and bad files that write nothing."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from avatar_lightning.cache import CacheError, CaptureCache
from avatar_lightning.capture.ingest import ingest_video
from avatar_lightning.cli import main
from avatar_lightning.render.cameras import approximate_intrinsics
from avatar_lightning.video import VideoError, VideoWriter, count_frames, iter_frames, probe_video, write_video
from tests.features_fixtures import face_image, moving_face_frames, write_timed_video


def _video(path: Path, frames: np.ndarray, fps: float = 25.0) -> Path:
    return write_video(path, frames, fps)


def _nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("suffix, tolerance", [(".mp4", 6), (".mov", 6), (".avi", 12), (".webm", 8)])
def test_round_trip(tmp_path: Path, suffix: str, tolerance: float) -> None:
    frames = moving_face_frames(10, size=96)
    video = _video(tmp_path / f"clip{suffix}", frames)
    cache = ingest_video(video, tmp_path / "cache")
    assert cache.num_frames == 10 and cache.fps == pytest.approx(25.0)
    assert [(s.name, s.first, s.last, s.split) for s in cache.sequences] == [("drive", 0, 9, "test")]
    camera = cache.camera("video")
    assert (camera.width, camera.height) == (96, 96)
    assert camera.K == approximate_intrinsics(96, 96) and camera.K[0][0] == pytest.approx(1.2 * 96)
    got = cache.read("cameras/video/frames")
    assert got.shape == (10, 96, 96, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - frames).mean() < tolerance  # lossy codecs, same pictures
    assert cache.manifest.meta["source"] == str(video.resolve())
    assert cache.record("cameras/video/frames").stage == "ingest"


def test_fractional_fps_and_resize(tmp_path: Path) -> None:
    frames = np.stack([face_image(160)[:96]] * 4)  # 160 x 96, not square
    video = _video(tmp_path / "clip.mp4", frames, fps=30000 / 1001)
    assert probe_video(video).fps == pytest.approx(29.97, abs=1e-3)
    cache = ingest_video(video, tmp_path / "cache", size=80)
    assert cache.fps == pytest.approx(29.97, abs=1e-3)
    assert cache.read("cameras/video/frames").shape == (4, 48, 80, 3)  # longer side 80, aspect kept


def test_crop_around_the_face(tmp_path: Path) -> None:
    from avatar_lightning.features.mediapipe_landmarks import FaceMeshTracker

    video = _video(tmp_path / "clip.mp4", moving_face_frames(6, size=192))
    cache = ingest_video(video, tmp_path / "cache", crop=True, size=128)
    frames, boxes = cache.read("cameras/video/frames"), cache.read("cameras/video/crop_boxes")
    assert frames.shape == (6, 128, 128, 3) and boxes.shape == (6, 3)
    assert cache.camera("video").width == 128 and cache.manifest.meta["ingest"]["crop"] is True
    landmarks = FaceMeshTracker(static=True)(frames[0])
    assert landmarks is not None and abs(landmarks[:, 0].mean() - 64) < 16  # the face fills the middle


def test_long_videos_stream(tmp_path: Path) -> None:
    frames = np.repeat(moving_face_frames(6, size=256), 8, axis=0)  # 48 frames, 9.4 MB decoded
    video = _video(tmp_path / "clip.mp4", frames)
    tracemalloc.start()
    try:
        cache = ingest_video(video, tmp_path / "cache", chunk=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cache.num_frames == 48
    assert peak < frames.nbytes / 3, f"peak {peak / 1e6:.1f} MB of numpy/Python memory while ingesting"
    same = ingest_video(video, tmp_path / "cache64", chunk=64)
    np.testing.assert_array_equal(same.read("cameras/video/frames"), cache.read("cameras/video/frames"))


def test_unreadable_paths_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "cache"
    with pytest.raises(VideoError, match="does not exist"):
        ingest_video(tmp_path / "missing.mp4", out)
    with pytest.raises(VideoError, match="not a file"):
        ingest_video(tmp_path, out)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    with pytest.raises(VideoError, match="not a readable video"):
        ingest_video(text, out)
    _nothing_left(out)


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_truncated_or_corrupt_videos_write_nothing(tmp_path: Path, suffix: str) -> None:
    video = _video(tmp_path / f"clip{suffix}", moving_face_frames(20, size=96))
    data = video.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    corrupt = tmp_path / f"corrupt{suffix}"
    noise = np.random.default_rng(0).integers(0, 256, len(data) // 2, dtype=np.uint8).tobytes()
    corrupt.write_bytes(data[:1024] + noise + data[1024 + len(noise) :])
    out = tmp_path / "cache"
    for bad in (truncated, corrupt):
        with pytest.raises(VideoError, match="truncated|corrupt|not a readable video"):
            ingest_video(bad, out)
        _nothing_left(out)


def test_existing_cache_is_kept_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = _video(tmp_path / "a.mp4", moving_face_frames(4, size=64))
    second = _video(tmp_path / "b.mp4", moving_face_frames(6, size=64))
    out = tmp_path / "cache"
    assert main(["ingest", "--video", str(first), "--out", str(out)]) == 0
    assert "video            64x64" in capsys.readouterr().out
    assert main(["ingest", "--video", str(second), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert CaptureCache(out).num_frames == 4
    assert main(["ingest", "--video", str(second), "--out", str(out), "--overwrite"]) == 0
    assert CaptureCache(out).num_frames == 6
    assert main(["ingest", "--video", str(tmp_path / "nope.webm"), "--out", str(tmp_path / "c")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4", "cache"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(CacheError, match="not a capture cache"):
        ingest_video(first, tmp_path / "other")


def test_video_io_helpers(tmp_path: Path) -> None:
    frames = moving_face_frames(3, size=64)[:, :63, :61]  # odd size: padded by one row and column
    video = write_video(tmp_path / "odd.mp4", frames, fps=10)
    info = probe_video(video)
    assert (info.width, info.height, info.codec, info.header_frames) == (62, 64, "h264", 3)
    assert count_frames(video) == 3
    assert next(iter_frames(video)).shape == (64, 62, 3)
    with pytest.raises(RuntimeError, match="interrupted"), VideoWriter(tmp_path / "partial.mp4", fps=10) as writer:
        writer.write(frames[:, :62, :60])
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]  # no partial or temporary file
    with pytest.raises(ValueError, match="uint8"), VideoWriter(tmp_path / "x.mp4", fps=10) as writer:
        writer.write(frames.astype(np.float32))
    with pytest.raises(VideoError, match="unknown video suffix"):
        VideoWriter(tmp_path / "x.gif", fps=10)


def _timed_video(path: Path, times_ms: list[int], size: int = 32) -> Path:
    """Frame j is a flat grey of level 5 j (readable back after H.264), presented at ``times_ms[j]``."""
    frames = np.stack([np.full((size, size, 3), 5 * j, np.uint8) for j in range(len(times_ms))])
    return write_timed_video(path, frames, times_ms)


def test_a_variable_frame_rate_is_resampled_by_timestamps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 20 frames at 50 fps, then 20 at 10 fps: played by index at the average rate, frame 20 (0.4 s) would show at
    # 1.2 s; resampled, every output frame shows what was on screen within one source interval of its tick
    times = [20 * j for j in range(20)] + [400 + 100 * j for j in range(20)]
    video = _timed_video(tmp_path / "vfr.mp4", times)
    info = probe_video(video)
    assert 10 < info.fps < 50  # FFmpeg's average rate: frames over the stream's duration
    from avatar_lightning.video import DecodeStats, scan_video

    stats = DecodeStats()
    shown = [int(round(frame.mean() / 5)) for frame in iter_frames(video, stats=stats)]
    assert stats.variable_rate and stats.decoded == 40 and stats.delivered == len(shown)
    assert shown == sorted(shown) and shown[0] == 0 and shown[-1] == 39  # in order, first and last kept
    errors = [abs(times[j] / 1000 - k / info.fps) for k, j in enumerate(shown)]
    assert max(errors) <= 0.1 + 1e-6, max(errors)  # naive index mapping is 0.8 s off here
    assert scan_video(video).delivered == len(shown) == count_frames(video)
    assert main(["ingest", "--video", str(video), "--out", str(tmp_path / "cache")]) == 0
    assert "variable frame rate; resampled" in capsys.readouterr().out
    cache = CaptureCache(tmp_path / "cache")
    assert cache.num_frames == len(shown) and cache.manifest.meta["ingest"]["frame_rate"]["variable"] is True


def test_a_constant_frame_rate_passes_unchanged(tmp_path: Path) -> None:
    from avatar_lightning.video import DecodeStats

    video = _timed_video(tmp_path / "cfr.mp4", [40 * j for j in range(30)])
    stats = DecodeStats()
    shown = [int(round(frame.mean() / 5)) for frame in iter_frames(video, stats=stats)]
    assert shown == list(range(30)) and not stats.variable_rate


@pytest.mark.parametrize("kind", ["empty", "png", "jpeg"])
def test_empty_files_and_still_images_are_not_videos(tmp_path: Path, kind: str) -> None:
    import cv2

    bad = tmp_path / "clip.mp4"
    if kind == "empty":
        bad.write_bytes(b"")
    else:
        ok, encoded = cv2.imencode(f".{kind[:3]}", face_image(64))
        bad.write_bytes(encoded.tobytes())  # a picture renamed .mp4: FFmpeg would read it as one frame
    message = "is empty" if kind == "empty" else "is a still image"
    with pytest.raises(VideoError, match=message):
        ingest_video(bad, tmp_path / "cache")
    _nothing_left(tmp_path / "cache")
