"""Video files in and out through PyAV (FFmpeg inside the wheel): stream-decode a driving video, encode frames.

OpenCV's wheels cannot encode H.264 and read some containers poorly; PyAV reads mp4, mov, avi, webm, mkv and
more, and writes H.264 mp4. Frames are RGB ``(H, W, 3) uint8``. Decoding is streamed one frame at a time, so
memory stays flat in the video's length; writing is atomic (a temporary file renamed into place).

Every problem with an input file is a :class:`VideoError` (a ``CacheError``, so the CLI prints it cleanly):
a missing, empty or unreadable path, a file that is not a video (a still image renamed ``.mp4`` included), a
corrupt stream, or a truncated file (fewer frames decoded than its header promises).

Frames come out at one constant rate, the stream's average: a variable-frame-rate file (phones write them; its
packet timestamps are read before decoding) is resampled by its timestamps, each output tick showing the frame
presented nearest that moment, so frame ``i`` is always time ``i / fps`` for every later stage (features, the
animator's windows, the written avatar video). A constant-rate file passes through unchanged, frame for frame.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from avatar_lightning.cache.files import replace_durably, temporary_path
from avatar_lightning.errors import CacheError

# Encoders by file suffix: what FFmpeg's muxer for that container accepts and PyAV's wheel ships.
CODEC_BY_SUFFIX = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".avi": "mpeg4", ".webm": "libvpx-vp9"}

# A file whose header promises more frames than decode gives is called truncated beyond this slack; container
# headers are estimates for some formats (webm has no frame count; avi's may count dropped frames).
TRUNCATION_SLACK_FRAMES = 2
TRUNCATION_SLACK_FRACTION = 0.02


class VideoError(CacheError):
    """A video file is missing, unreadable, not a video, corrupt or truncated."""


# FFmpeg opens a single picture as a one-frame "video" through these demuxers; a still cannot drive anything.
_STILL_IMAGE_DEMUXERS = ("image2",)
_STILL_IMAGE_SUFFIX = "_pipe"  # png_pipe, jpeg_pipe, webp_pipe, bmp_pipe, tiff_pipe, ...
# A stream is variable-rate when a frame interval departs from the median by more than this share of it;
# millisecond time bases round 29.97 fps to 33/34 ms (3 %), which stays constant.
VARIABLE_RATE_TOLERANCE = 0.25


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream (before decoding anything).

    ``header_frames`` is the container's frame count (0 where the format has none, e.g. webm);
    ``duration_s`` the stream's duration where known. Neither is trusted for allocation: see :func:`count_frames`.
    """

    path: str
    width: int
    height: int
    fps: float
    codec: str
    container: str
    header_frames: int
    duration_s: float | None
    rate: Fraction = Fraction(0)  # ``fps`` exactly: the constant rate frames are delivered at

    @property
    def expected_frames(self) -> int | None:
        """Frames the header promises (count, else duration x fps), or None when it promises nothing."""
        if self.header_frames > 0:
            return self.header_frames
        if self.duration_s:
            return round(self.duration_s * self.fps)
        return None


def _open(path: str | os.PathLike[str]) -> av.container.InputContainer:
    path = Path(path)
    if not path.exists():
        raise VideoError(f"video {path} does not exist")
    if not path.is_file():
        raise VideoError(f"video {path} is not a file")
    if path.stat().st_size == 0:
        raise VideoError(f"video {path} is empty (0 bytes); was it copied or downloaded completely?")
    try:
        container = av.open(str(path), mode="r")
    except PermissionError:
        raise VideoError(f"video {path} is not readable (permission denied)") from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise VideoError(f"{path} is not a readable video: FFmpeg cannot parse it ({reason}); the file is corrupt, "
                         "truncated, or not a video") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} holds no video stream")
    demuxer = str(container.format.name)
    if demuxer in _STILL_IMAGE_DEMUXERS or demuxer.endswith(_STILL_IMAGE_SUFFIX):
        codec = container.streams.video[0].codec_context.name
        container.close()
        raise VideoError(f"{path} is a still image ({codec}), not a video; give a video file (mp4, mov, avi, webm, "
                         "mkv)")
    return container


def _info(container: av.container.InputContainer, path: str | os.PathLike[str]) -> VideoInfo:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        raise VideoError(f"{path}: the video stream has no frame rate")
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None and len(container.streams) == 1:  # container duration may be audio's
        duration = container.duration / av.time_base
    context = stream.codec_context
    return VideoInfo(
        path=str(path), width=int(context.width), height=int(context.height), fps=float(rate),
        codec=str(context.name), container=str(container.format.name), header_frames=int(stream.frames or 0),
        duration_s=duration, rate=Fraction(rate),
    )


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Size, frame rate, codec and header frame count of ``path``'s first video stream; decodes nothing."""
    with contextlib.closing(_open(path)) as container:
        return _info(container, path)


@contextlib.contextmanager
def _decoder_errors() -> Iterator[list[tuple[int, str, str]]]:
    """Collect FFmpeg's error-level messages (decoders conceal damage and only log it); any thread's count."""
    previous = av.logging.get_level()
    if previous is None or previous < av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=False) as logs:  # decoder threads log too
            yield logs
    finally:
        av.logging.set_level(previous)


@dataclass
class DecodeStats:
    """What one pass of :func:`iter_frames` did: frames decoded from the file, and how the constant-rate
    resampling changed them (``repeated``: ticks that showed the previous frame again; ``dropped``: frames that
    fell on a tick already taken). Both are 0 for a constant-rate file."""

    decoded: int = 0
    delivered: int = 0
    repeated: int = 0
    dropped: int = 0

    @property
    def variable_rate(self) -> bool:
        return bool(self.repeated or self.dropped)


def has_variable_rate(path: str | os.PathLike[str]) -> bool:
    """Whether the frame intervals of ``path``'s first video stream vary (read from packet timestamps: demuxing
    only, no decoding). Streams without timestamps count as constant."""
    stamps: list[int] = []
    with contextlib.closing(_open(path)) as container:
        stream = container.streams.video[0]
        try:
            stamps.extend(packet.pts for packet in container.demux(stream) if packet.pts is not None)
        except av.error.FFmpegError:
            pass  # a damaged file: decoding, next, names the damage; its timing is moot
    stamps.sort()
    intervals = np.diff(np.asarray(stamps, dtype=np.float64))
    intervals = intervals[intervals > 0]
    if len(intervals) < 2:
        return False
    median = float(np.median(intervals))
    return bool(np.abs(intervals - median).max() > VARIABLE_RATE_TOLERANCE * median)


def iter_frames(path: str | os.PathLike[str], check_length: bool = True, strict: bool = True,
                stats: DecodeStats | None = None) -> Iterator[np.ndarray]:
    """Decode ``path`` frame by frame: each item ``(H, W, 3) uint8`` RGB, at the constant rate ``fps``.

    Raises :class:`VideoError` when decoding fails (naming the frame); with ``strict``, also when FFmpeg reports
    damage it concealed (the frames would hold garbage); with ``check_length``, when the stream ends well
    before its header's frame count (a truncated file). ``stats``, when given, is filled as frames go by.
    """
    stats = stats if stats is not None else DecodeStats()
    resample = has_variable_rate(path)
    with contextlib.closing(_open(path)) as container, _decoder_errors() as logs:
        info = _info(container, path)
        stream = container.streams.video[0]
        if strict:
            # FFmpeg's log callback re-enters Python; called from a decoder worker thread it can deadlock
            # against this thread, which holds the GIL while waiting for that worker (seen in CI). While we
            # capture the log, decode on this thread alone.
            stream.thread_count = 1
        else:
            stream.thread_type = "AUTO"  # frame threading: several frames decoded in parallel
        start: Fraction | None = None
        previous: np.ndarray | None = None
        try:
            for frame in container.decode(stream):
                stats.decoded += 1
                if not resample or frame.pts is None or frame.time_base is None:
                    tick = stats.delivered  # constant rate (or no timing to resample by): as it comes
                else:
                    time = Fraction(frame.pts) * frame.time_base
                    start = time if start is None else start
                    tick = round((time - start) * info.rate)
                if tick < stats.delivered:  # its tick already shows an earlier frame
                    stats.dropped += 1
                    continue
                image = frame.to_ndarray(format="rgb24")
                while previous is not None and stats.delivered < tick:  # a gap: hold the frame on screen
                    yield previous
                    stats.delivered += 1
                    stats.repeated += 1
                yield image
                stats.delivered += 1
                previous = image
        except av.error.FFmpegError as err:
            raise VideoError(f"{path}: corrupt video, decoding failed after {stats.decoded} frames ({err})") from None
        errors = [f"{name}: {message.strip()}" for level, name, message in logs if level <= av.logging.ERROR]
        if strict and errors:
            raise VideoError(f"{path}: corrupt video, FFmpeg reported {len(errors)} error(s) while decoding "
                             f"{stats.decoded} frames, e.g. {errors[0]!r}")
        expected = info.expected_frames
        if check_length and expected is not None:
            slack = max(TRUNCATION_SLACK_FRAMES, round(TRUNCATION_SLACK_FRACTION * expected))
            if stats.decoded < expected - slack:
                raise VideoError(
                    f"{path}: truncated video, decoded {stats.decoded} frames but its header promises {expected}"
                )
        if stats.decoded == 0:
            raise VideoError(f"{path}: no frame could be decoded")


def scan_video(path: str | os.PathLike[str], strict: bool = True) -> DecodeStats:
    """Decode the whole video once: how many frames it delivers (headers may lack or misstate the count) and
    whether its frame rate varies. This also validates the file end to end before anything is written from it."""
    stats = DecodeStats()
    for _ in iter_frames(path, strict=strict, stats=stats):
        pass
    return stats


def count_frames(path: str | os.PathLike[str], strict: bool = True) -> int:
    """The number of frames :func:`iter_frames` delivers (see :func:`scan_video`)."""
    return scan_video(path, strict=strict).delivered


def even_size(width: int, height: int) -> tuple[int, int]:
    """The size rounded up to even numbers (H.264 with 4:2:0 chroma needs it)."""
    return width + width % 2, height + height % 2


class VideoWriter:
    """Encode frames into a video file atomically: written under a temporary name, renamed on a clean exit.

    The codec follows the suffix (``.mp4``/``.mov``/``.mkv``: H.264, ``.avi``: MPEG-4 part 2, ``.webm``: VP9).
    Frames of odd size are padded by one replicated row/column (4:2:0 chroma needs even sizes).

    Args:
        path: the output file.
        fps: frames per second (stored as an exact fraction, e.g. 30000/1001 for 29.97).
        codec: an FFmpeg encoder name, overriding the suffix's.
        crf: constant rate factor for x264/VP9 (lower is better; 18-23 is visually near lossless).
        options: further encoder options.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float, codec: str | None = None, crf: int = 18,
                 options: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.fps = fps
        self.codec = codec or CODEC_BY_SUFFIX.get(self.path.suffix.lower())
        if self.codec is None:
            raise VideoError(f"{self.path}: unknown video suffix; use one of {sorted(CODEC_BY_SUFFIX)} or pass codec=")
        self.options = {"crf": str(crf), **({"preset": "veryfast"} if self.codec == "libx264" else {}),
                        **(options or {})}
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._tmp: Path | None = None
        self.frames_written = 0

    def __enter__(self) -> VideoWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temporary_path(self.path, suffix=f".tmp{self.path.suffix}")  # FFmpeg infers the format
        self._container = av.open(str(self._tmp), mode="w", format=None)
        return self

    def _start(self, width: int, height: int) -> av.video.stream.VideoStream:
        assert self._container is not None
        stream = self._container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height = even_size(width, height)
        stream.pix_fmt = "yuv420p"
        stream.options = dict(self.options)
        return stream

    def write(self, frames: np.ndarray) -> None:
        """Append ``(H, W, 3)`` or ``(B, H, W, 3) uint8`` RGB frames (a memory map is fine)."""
        if self._container is None:
            raise RuntimeError("VideoWriter.write outside its `with` block")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (B, H, W, 3) uint8, got {frames.dtype}{list(frames.shape)}")
        if self._stream is None:
            self._stream = self._start(frames.shape[2], frames.shape[1])
        stream = self._stream
        pad_h, pad_w = stream.height - frames.shape[1], stream.width - frames.shape[2]
        if pad_h < 0 or pad_w < 0 or pad_h > 1 or pad_w > 1:
            raise ValueError(f"frame size {frames.shape[2]}x{frames.shape[1]} differs from the video's "
                             f"{stream.width}x{stream.height}")
        for image in frames:
            if pad_h or pad_w:
                image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            self._container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image),
                                                                         format="rgb24")))
            self.frames_written += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        assert self._container is not None and self._tmp is not None
        try:
            if exc_type is None:
                if self._stream is None:
                    raise VideoError(f"{self.path}: no frame was written")
                self._container.mux(self._stream.encode())  # flush the encoder's delayed frames
            self._container.close()
            if exc_type is None:
                replace_durably(self._tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()


def write_video(path: str | os.PathLike[str], frames: np.ndarray | Iterable[np.ndarray], fps: float,
                chunk: int = 64, **options: object) -> Path:
    """Encode ``frames`` (an ``(N, H, W, 3) uint8`` array or memory map, or an iterable of frames/batches)."""
    with VideoWriter(path, fps, **options) as writer:  # type: ignore[arg-type]
        if isinstance(frames, np.ndarray):
            for start in range(0, len(frames), chunk):
                writer.write(frames[start : start + chunk])
        else:
            for item in frames:
                writer.write(item)
    return Path(path)
