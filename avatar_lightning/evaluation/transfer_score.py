"""How faithfully an avatar video follows its driving video, measured by an estimator the animator never saw.

An AED-style check (the "average expression distance" of 2-D reenactment papers), made offline and
scale-free: MediaPipe FaceMesh runs on every driving frame and on every avatar frame, each face is aligned to
a frontal reference (pose and scale removed), and :mod:`expression_measures` turns it into interpretable
measures (mouth opening, eye opening, brow raise, ...). Per measure the two series are compared after each is
standardised over its own video (so the actor's face shape and the avatar's expression range do not count,
only *when* and *how much relative to its own range* a face moves):

- ``pearson``: correlation of the two series over frames where both show a face (1 = moves in step);
  n/a when either series is constant (a frozen avatar cannot score), counted as 0 in the means;
- ``mae``: mean absolute difference of the standardised series (0 = identical, about 1.13 for unrelated);
- ``jitter_ratio``: the avatar's frame-to-frame roughness over the driver's (RMS second difference of the
  standardised series); 1 = as smooth as the driver, < 1 smoother (lagging), > 1 jittery;
- ``best_lag``: the shift of the avatar (frames, + = avatar late) within +-``MAX_LAG_SECONDS`` that
  correlates best: a diagnostic of latency, not part of the score;
- ``amplitude``: the avatar's standard deviation of the raw measure over the driver's, over the same frames (1 = as
  lively, near 0 = frozen, 2 = exaggerated). Standardising makes the correlation blind to how much a face moves;
  this is the number that sees it. It compares like with like only where the faces are alike: the same person
  (self-reenactment), or an avatar that should copy a driver's range.

How it differs from the papers' AED: they compare 3DMM expression parameters (Deep3DFaceRecon, SMIRK) of
driver and output; here the estimator is FaceMesh, whose landmarks may also feed the animator (the
``mediapipe`` features), but never in this form: the animator sees the whole aligned landmark set relative to
a neutral, this score sees a handful of standardised ratios, correlated over time. An avatar driven by DECA
or blendshape features is scored by an estimator fully independent of its input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avatar_lightning.errors import CacheError
from avatar_lightning.evaluation.expression_measures import (
    CORE_MEASURES,
    MEASURES,
    expression_measures,
    measures_of_landmarks,
)
from avatar_lightning.video import count_frames, iter_frames

MAX_LAG_SECONDS = 0.5
MIN_FRAMES = 8  # fewer common frames with a face than this cannot give a correlation worth reporting
DRIVER_FACE_SAMPLES = 8  # frames of each driving video FaceMesh looks at before the demo trains anything
CONSTANT_STD = 1e-9  # a series whose standard deviation is below this (relative to its mean) is constant


@dataclass
class VideoLandmarks:
    """FaceMesh on every frame of one video (or a region of it)."""

    spec: str
    fps: float
    landmarks: np.ndarray  # (N, 478, 3) pixels, NaN where no face
    valid: np.ndarray  # (N,) bool

    @property
    def measures(self) -> np.ndarray:
        return measures_of_landmarks(self.landmarks, self.valid)


def video_path(spec: str) -> Path:
    """The file of ``PATH`` or ``PATH@x,y,w,h``; a missing file is a clear error."""
    from avatar_lightning.capture.sources import CameraSource

    path = CameraSource.parse(spec).path
    if not path.is_file():
        raise CacheError(f"{path}: no such video file")
    return path


def iter_video_frames(spec: str) -> tuple[float, int, Iterator[np.ndarray]]:
    """``(fps, frames, iterator of RGB frames)`` of ``PATH`` or ``PATH@x,y,w,h`` (a region, e.g. side by side)."""
    from avatar_lightning.capture.sources import CameraSource, iter_capture, probe_capture

    video_path(spec)
    info = probe_capture([CameraSource.parse(spec)])
    return info.fps, info.num_frames, (views[0] for views in iter_capture(info))


Progress = Callable[[str, int, int], None]  # (what, done, total), as every stage takes it


def track_video(spec: str, progress: Progress | None = None,
                opened: tuple[float, int, Iterator[np.ndarray]] | None = None) -> VideoLandmarks:
    """FaceMesh in tracking mode over every frame of ``spec``; memory grows only by the landmarks.
    ``opened``: what :func:`iter_video_frames` already returned for ``spec`` (its frames not yet read)."""
    from avatar_lightning.features.mediapipe_landmarks import track_landmarks

    fps, frames, images = opened or iter_video_frames(spec)
    landmarks, valid = track_landmarks(images, frames, progress=progress,
                                       what=f"FaceMesh {video_path(spec).name}")
    return VideoLandmarks(spec, fps, landmarks, valid)


def frame_measures(frames: Iterable[np.ndarray], count: int, consecutive: bool = True) -> np.ndarray:
    """Expression measures ``(count, M)`` of FaceMesh on ``count`` RGB frames (NaN rows: no face).

    ``consecutive``: the frames are a video's, in order (FaceMesh tracks between them); otherwise every frame is
    detected on its own (frames sampled across a sequence).
    """
    from avatar_lightning.features.mediapipe_landmarks import FaceMeshTracker, track_landmarks

    if consecutive:
        landmarks, valid = track_landmarks(frames, count)
        return measures_of_landmarks(landmarks, valid)
    tracker = FaceMeshTracker(static=True)
    landmarks = np.full((count, 478, 3), np.nan)
    try:
        for i, image in enumerate(frames):
            found = tracker(np.asarray(image))
            if found is not None:
                landmarks[i] = found
    finally:
        tracker.close()
    return measures_of_landmarks(landmarks, np.isfinite(landmarks[:, 0, 0]))


class MeasureStream:
    """FaceMesh in tracking mode over frames pushed in order, a chunk at a time (memory: the landmarks only)."""

    def __init__(self) -> None:
        from avatar_lightning.features.mediapipe_landmarks import FaceMeshTracker

        self.tracker = FaceMeshTracker(static=False)
        self.landmarks: list[np.ndarray] = []

    def push(self, frames: Iterable[np.ndarray]) -> None:
        for image in frames:
            found = self.tracker(np.asarray(image))
            self.landmarks.append(np.full((478, 3), np.nan) if found is None else found)

    def measures(self) -> np.ndarray:
        """``(frames pushed, M)``, NaN rows where no face; closes the tracker."""
        self.tracker.close()
        if not self.landmarks:
            return np.zeros((0, len(MEASURES)))
        landmarks = np.stack(self.landmarks)
        return measures_of_landmarks(landmarks, np.isfinite(landmarks[:, 0, 0]))


@dataclass
class MeasureScore:
    pearson: float | None
    mae: float | None
    jitter_ratio: float | None
    best_lag: int | None
    amplitude: float | None = None  # the avatar's spread of the raw measure over the driver's (0: frozen)


@dataclass
class TransferScore:
    """Per-measure scores and their summary; ``to_json`` is what the command writes."""

    frames_driver: int
    frames_avatar: int
    frames_scored: int  # frames where both have a face (of the common length)
    fps: float
    measures: dict[str, MeasureScore] = field(default_factory=dict)

    @property
    def face_fraction(self) -> float:
        common = min(self.frames_driver, self.frames_avatar)
        return self.frames_scored / common if common else 0.0

    def mean_pearson(self, names: tuple[str, ...] = MEASURES) -> float:
        """Mean correlation over ``names``; a measure with no correlation (constant series) counts as 0."""
        values = [self.measures[n].pearson for n in names if n in self.measures]
        return float(np.mean([0.0 if v is None else v for v in values])) if values else float("nan")

    def amplitude(self, names: tuple[str, ...] = MEASURES) -> float:
        """Median over ``names`` of the amplitude ratios (n/a ones, where the driver does not move, left out)."""
        values = [self.measures[n].amplitude for n in names if n in self.measures]
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else float("nan")

    @property
    def jitter_ratio(self) -> float:
        """Median over measures of the per-measure jitter ratios (n/a ones left out)."""
        values = [m.jitter_ratio for m in self.measures.values() if m.jitter_ratio is not None]
        return float(np.median(values)) if values else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"mean_pearson": self.mean_pearson(), "mean_pearson_core": self.mean_pearson(CORE_MEASURES),
                "min_pearson": min((0.0 if m.pearson is None else m.pearson) for m in self.measures.values()),
                "mouth_open_pearson": self.measures["mouth_open"].pearson, "jitter_ratio": self.jitter_ratio,
                "amplitude": self.amplitude(), "mouth_open_amplitude": self.measures["mouth_open"].amplitude,
                "face_fraction": self.face_fraction}

    def to_json(self) -> dict[str, Any]:
        return {"summary": _finite(self.summary()), "frames_driver": self.frames_driver,
                "frames_avatar": self.frames_avatar, "frames_scored": self.frames_scored, "fps": self.fps,
                "measures": {name: _finite(asdict(score)) for name, score in self.measures.items()}}


def _finite(values: Mapping[str, Any]) -> dict[str, Any]:
    """NaN becomes None, so the JSON is standard."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def _standardise(series: np.ndarray) -> np.ndarray | None:
    std = series.std()
    if not np.isfinite(std) or std <= CONSTANT_STD * max(1.0, abs(float(series.mean()))):
        return None
    return (series - series.mean()) / std


def _roughness(series: np.ndarray, both: np.ndarray) -> float:
    """RMS second difference over runs of three consecutive frames with a face."""
    triple = both[:-2] & both[1:-1] & both[2:]
    if not triple.any():
        return float("nan")
    second = series[2:] - 2 * series[1:-1] + series[:-2]
    return float(np.sqrt(np.mean(second[triple] ** 2)))


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    za, zb = _standardise(a), _standardise(b)
    return None if za is None or zb is None else float(np.mean(za * zb))


def _best_lag(driver: np.ndarray, avatar: np.ndarray, both: np.ndarray, max_lag: int) -> int | None:
    best, best_r = None, -np.inf
    for lag in range(-max_lag, max_lag + 1):
        d = slice(max(0, -lag), len(driver) - max(0, lag))
        a = slice(max(0, lag), len(avatar) - max(0, -lag))
        mask = both[d] & both[a]
        if mask.sum() < MIN_FRAMES:
            continue
        r = _pearson(driver[d][mask], avatar[a][mask])
        if r is not None and r > best_r:
            best, best_r = lag, r
    return best


def score_measures(driver: np.ndarray, avatar: np.ndarray, fps: float) -> TransferScore:
    """Compare measure series ``driver (N, M)`` and ``avatar (N', M)`` (NaN rows: no face) frame by frame.

    Frames are paired by index over the common length (``animate`` writes one frame per driving frame).
    """
    driver, avatar = np.asarray(driver, np.float64), np.asarray(avatar, np.float64)
    if driver.ndim != 2 or avatar.ndim != 2 or driver.shape[1] != len(MEASURES) or avatar.shape[1] != len(MEASURES):
        raise ValueError(f"measure series must be (N, {len(MEASURES)}), got {list(driver.shape)} and "
                         f"{list(avatar.shape)}")
    n = min(len(driver), len(avatar))
    d, a = driver[:n], avatar[:n]
    both = np.isfinite(d).all(1) & np.isfinite(a).all(1)
    score = TransferScore(len(driver), len(avatar), int(both.sum()), float(fps))
    max_lag = max(1, round(MAX_LAG_SECONDS * fps))
    for m, name in enumerate(MEASURES):
        if both.sum() < MIN_FRAMES:
            score.measures[name] = MeasureScore(None, None, None, None)
            continue
        zd, za = _standardise(d[both, m]), _standardise(a[both, m])
        amplitude = None if zd is None else float(a[both, m].std() / d[both, m].std()) if za is not None else 0.0
        if zd is None or za is None:
            score.measures[name] = MeasureScore(None, None, None, None, amplitude)
            continue
        full_d, full_a = np.zeros(n), np.zeros(n)
        full_d[both], full_a[both] = zd, za
        rough_d = _roughness(full_d, both)
        jitter = _roughness(full_a, both) / rough_d if rough_d > 0 else float("nan")
        score.measures[name] = MeasureScore(
            pearson=float(np.mean(zd * za)), mae=float(np.mean(np.abs(zd - za))),
            jitter_ratio=jitter if math.isfinite(jitter) else None,
            best_lag=_best_lag(d[:, m], a[:, m], both, max_lag), amplitude=amplitude)
    return score


def score_videos(driving: str, avatar: str, progress: Progress | None = None
                 ) -> tuple[TransferScore, np.ndarray, np.ndarray]:
    """Track both videos and score them; also returns both measure series (for the plot).

    Both files are opened (and validated, which counts their frames) before FaceMesh sees a frame, so a rate or
    length that cannot pair is refused before the expensive part."""
    opened = {spec: iter_video_frames(spec) for spec in (driving, avatar)}
    rates = {spec: fps for spec, (fps, _, _) in opened.items()}
    frames = {spec: count for spec, (_, count, _) in opened.items()}
    if abs(rates[driving] - rates[avatar]) > 1e-3 * rates[driving]:
        raise CacheError(f"{driving} runs at {rates[driving]:g} fps but {avatar} at {rates[avatar]:g}; "
                         "frames are paired by index, so both must have one frame rate")
    if frames[driving] < MIN_FRAMES:
        raise CacheError(f"{driving} has {frames[driving]} frame(s); a correlation needs at least {MIN_FRAMES}")
    if frames[driving] != frames[avatar]:
        raise CacheError(f"{avatar} has {frames[avatar]} frames but {driving} {frames[driving]}; `animate` writes one "
                         "frame per driving frame, so is this the avatar video of that driver?")
    tracked_driver = track_video(driving, progress, opened[driving])
    tracked_avatar = track_video(avatar, progress, opened[avatar])
    if not tracked_driver.valid.any():
        raise CacheError(f"{driving}: FaceMesh found no face in any of its {len(tracked_driver.valid)} frames")
    d, a = tracked_driver.measures, tracked_avatar.measures
    return score_measures(d, a, tracked_driver.fps), d, a


def write_report(score: TransferScore, driver: np.ndarray, avatar: np.ndarray, out: str | Path,
                 title: str = "") -> tuple[Path, Path]:
    """``<out>.json`` (scores) and ``<out>.png`` (driver vs avatar, standardised, one panel per measure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out.with_name(out.name + ".json"), out.with_name(out.name + ".png")
    json_path.write_text(json.dumps({"title": title, **score.to_json()}, indent=1))
    n = min(len(driver), len(avatar))
    t = np.arange(n) / score.fps
    fig, axes = plt.subplots(len(MEASURES), 1, figsize=(10, 1.4 * len(MEASURES)), sharex=True)
    for m, (ax, name) in enumerate(zip(axes, MEASURES, strict=True)):
        for series, label, colour in ((driver[:n, m], "driver", "k"), (avatar[:n, m], "avatar", "tab:red")):
            finite = np.isfinite(series)
            z = np.full(n, np.nan)
            if finite.sum() > 1 and series[finite].std() > 0:
                z[finite] = (series[finite] - series[finite].mean()) / series[finite].std()
            ax.plot(t, z, colour, lw=0.9, label=label)
        r = score.measures[name].pearson
        ax.set_ylabel(name, rotation=0, ha="right", fontsize=8)
        ax.text(1.0, 0.85, "r n/a" if r is None else f"r {r:.2f}", transform=ax.transAxes, ha="right", fontsize=8)
    axes[0].legend(loc="upper left", fontsize=7, ncol=2)
    axes[0].set_title(title or f"transfer: mean r {score.mean_pearson():.2f}", fontsize=9)
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return json_path, png_path


def markdown_table(score: TransferScore) -> str:
    """One row per measure: Pearson, amplitude, MAE, jitter ratio, best lag."""

    def fmt(value: float | None, digits: str = ".2f") -> str:
        return "n/a" if value is None else format(value, digits)

    lines = ["| measure | Pearson | amplitude | MAE (std units) | jitter ratio | best lag (frames) |",
             "|---|---|---|---|---|---|"]
    for name, m in score.measures.items():
        lines.append(f"| {name} | {fmt(m.pearson)} | {fmt(m.amplitude)} | {fmt(m.mae)} | {fmt(m.jitter_ratio)} | "
                     f"{'n/a' if m.best_lag is None else m.best_lag} |")
    s = _finite(score.summary())
    lines.append(f"| **mean / median** | **{fmt(s['mean_pearson'])}** | **{fmt(s['amplitude'])}** | | "
                 f"{fmt(s['jitter_ratio'])} | |")
    return "\n".join(lines) + f"\n\nFrames with a face in both: {score.frames_scored} of " \
                              f"{min(score.frames_driver, score.frames_avatar)} ({score.face_fraction:.0%}).\n"


def mesh_measures(mesh: Any, blend_weights: Any) -> np.ndarray:
    """Measures ``(B, M)`` of the avatar's own geometry: the head template deformed by ``blend_weights (B, K)``.

    The template's first 468 vertices are FaceMesh's landmarks (:mod:`synth.face`), in the same axes as an
    aligned face, so this scores the animator and the head VAE's blend weights before any rendering: the gap
    between this and the video score is what rasterising, the re-render U-Net and FaceMesh on the output lose.
    """
    import torch

    with torch.no_grad():
        vertices = mesh.deform(torch.as_tensor(blend_weights, dtype=torch.float32)).cpu().numpy()
    return expression_measures(vertices)


def videos_markdown(scores: Mapping[str, TransferScore]) -> str:
    """One row per driving video: the full chain's transfer score (FaceMesh on the driver vs the avatar video)."""
    lines = ["The exported avatar's video against its driver (`score-transfer`: FaceMesh on both, Pearson per "
             "measure after standardising each video's series, higher is better; amplitude: the avatar's spread of "
             "each measure over the driver's, median over the measures and for mouth opening, 1 = as lively).", "",
             "| driver | mean | " + " | ".join(MEASURES) + " | amplitude | mouth amplitude | jitter ratio | "
             "frames with a face |",
             "|---|---|" + "---|" * (len(MEASURES) + 4)]

    def fmt(value: float | None) -> str:
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"

    for name, score in scores.items():
        cells = [fmt(score.measures[m].pearson) for m in MEASURES]
        lines.append(f"| {name} | **{score.mean_pearson():.2f}** | " + " | ".join(cells)
                     + f" | {fmt(score.amplitude())} | {fmt(score.measures['mouth_open'].amplitude)} | "
                       f"{score.jitter_ratio:.2f} | {score.face_fraction:.0%} |")
    return "\n".join(lines) + "\n"


def check_driving_videos(drivers: Sequence[str | Path]) -> None:
    """Refuse a missing, broken, too short or faceless driving video now, not after minutes of training.

    Each file is decoded end to end (corrupt and truncated files are named) and FaceMesh looks at a few frames
    spread over it; a driver in which none shows a face could not be animated or scored.
    """
    from avatar_lightning.features.mediapipe_landmarks import FaceMeshTracker

    for clip in drivers:
        frames = count_frames(clip)
        if frames < MIN_FRAMES:
            raise CacheError(f"--drivers {clip} has {frames} frame(s); scoring a driver needs at least {MIN_FRAMES}")
        picks = set(np.linspace(0, frames - 1, min(DRIVER_FACE_SAMPLES, frames)).round().astype(int).tolist())
        tracker = FaceMeshTracker(static=True)
        try:
            if not any(tracker(image) is not None for i, image in enumerate(iter_frames(clip)) if i in picks):
                raise CacheError(f"--drivers {clip}: FaceMesh found no face in {len(picks)} frames spread over "
                                 "the video; a driver must show a face")
        finally:
            tracker.close()
