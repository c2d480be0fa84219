"""Every animator run of a grid driven by real videos, scored by the transfer metric on the avatar's geometry.

For ``compare --drivers``: each run's animator reads each driving clip's features (extracted the way the run's
training features were: same extractor, same ``relative``), its latents are decoded by the head VAE that wrote
the training latents, the head template is deformed by the decoded blend weights, and the mesh's landmark
vertices are measured exactly as FaceMesh's landmarks are (:func:`transfer_score.mesh_measures`), against
FaceMesh on the driving frames. No rendering: a grid of 12 cells x 6 clips takes a minute, not hours, and it
ranks what the animator and the features do; the full chain's video score (``animate --score``) adds what the
renderer and FaceMesh on rendered frames lose, for the one exported avatar.

Driving caches (frames + features) are kept in a work folder and reused between runs and calls.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatar_lightning.cache.files import atomic_write_text
from avatar_lightning.cache.layout import feature_array, latent_source
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.cache.template import load_template
from avatar_lightning.capture.ingest import ingest_video
from avatar_lightning.checkpoints import load_model
from avatar_lightning.errors import CacheError
from avatar_lightning.evaluation.candidates import run_cache
from avatar_lightning.evaluation.plots import pyplot, save_figure
from avatar_lightning.evaluation.tables import format_number
from avatar_lightning.evaluation.transfer_score import (
    TransferScore,
    VideoLandmarks,
    mesh_measures,
    score_measures,
    track_video,
)
from avatar_lightning.features.run import extract_features, options_from_record
from avatar_lightning.models.head_vae import load_head_vae


@dataclass
class RunTransfer:
    """One run's transfer scores, one per driving clip."""

    run_dir: Path
    label: str
    features: str
    scores: dict[str, TransferScore]

    def metrics(self) -> dict[str, float]:
        """Means over the clips, plus the worst clip's mean correlation."""
        summaries = [s.summary() for s in self.scores.values()]
        return {
            "transfer_r": float(np.mean([s["mean_pearson"] for s in summaries])),
            "transfer_worst_clip_r": float(np.min([s["mean_pearson"] for s in summaries])),
            "transfer_mouth_r": float(np.mean([s["mouth_open_pearson"] or 0.0 for s in summaries])),
            "transfer_min_measure_r": float(np.min([s["min_pearson"] for s in summaries])),
            "transfer_jitter_ratio": float(np.nanmedian([s["jitter_ratio"] for s in summaries])),
            "transfer_amplitude": float(np.nanmedian([_nan(s["amplitude"]) for s in summaries])),
            "transfer_mouth_amplitude": float(np.nanmedian([_nan(s["mouth_open_amplitude"]) for s in summaries])),
        }


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


class DrivingClips:
    """Real driving videos ingested once into ``work``, their features made on demand, FaceMesh run once."""

    def __init__(self, videos: Sequence[str | Path], work: str | Path) -> None:
        self.videos = [Path(v) for v in videos]
        missing = [str(v) for v in self.videos if not v.is_file()]
        if missing:
            raise CacheError(f"driving video(s) not found: {', '.join(missing)}")
        self.work = Path(work)
        self._tracked: dict[Path, VideoLandmarks] = {}

    def tracked(self, video: Path) -> VideoLandmarks:
        if video not in self._tracked:
            self._tracked[video] = track_video(str(video))
            if not self._tracked[video].valid.any():
                raise CacheError(f"{video}: FaceMesh found no face in any frame")
        return self._tracked[video]

    def cache(self, video: Path, extractor: str, output: str, relative: str,
              options: dict[str, Any] | None = None) -> CaptureCache:
        """``video`` ingested with ``features/<output>`` as ``extractor`` with ``relative`` makes them (kept)."""
        folder = self.work / f"{video.stem}.{extractor}.{relative}"
        if not (folder / "manifest.json").is_file():
            ingest_video(video, folder, overwrite=True)
        if not CaptureCache(folder).has(feature_array(output)):
            extract_features(folder, extractor, options=options, relative=relative, progress=False)
        return CaptureCache(folder)

    def features(self, video: Path, extractor: str, output: str, relative: str,
                 options: dict[str, Any] | None = None) -> np.ndarray:
        """``features/<output>`` of ``video`` (see :meth:`cache`)."""
        cache = self.cache(video, extractor, output, relative, options)
        return np.asarray(cache.read(feature_array(output)), np.float32)


def score_run(run_dir: Path, actor: CaptureCache, clips: DrivingClips, head_vae: Any, mesh: Any) -> RunTransfer:
    """One animator run (its ``checkpoints/last.ckpt``) driven by every clip."""
    from avatar_lightning.models.animator import Animator

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise CacheError(f"{run_dir}: no checkpoints/last.ckpt to drive")
    model = load_model(Animator, checkpoint)
    output = str(model.hparams.features)
    recorded = actor.manifest.meta.get("features", {}).get(output)
    if recorded is None:
        raise CacheError(f"{actor.root}: no record of how features/{output} were made, so the drivers' cannot be "
                         "made the same way")
    scores_file = run_dir / "scores.json"
    label = json.loads(scores_file.read_text())["label"] if scores_file.is_file() else run_dir.name
    scores = {}
    for video in clips.videos:
        x = clips.features(video, recorded["extractor"], output, recorded.get("relative", "none"),
                           options_from_record(recorded))
        with torch.no_grad():
            latents = model.predict_sequence(torch.from_numpy(x))
            _, blend = head_vae.decode(latents)
        tracked = clips.tracked(video)
        scores[video.name] = score_measures(tracked.measures, mesh_measures(mesh, blend), tracked.fps)
    return RunTransfer(run_dir, label, output, scores)


def score_grid(run_dirs: Sequence[Path], actor: CaptureCache, videos: Sequence[str | Path], work: str | Path,
               latents: str = "head_vae") -> list[RunTransfer]:
    """Every run driven by every video; the head VAE is the one recorded for ``latents/<latents>``."""
    source = latent_source(actor, latents)
    if source is None:
        raise CacheError(f"{actor.root}: no head VAE recorded for latents/{latents}; run `python -m avatar_lightning "
                         "encode` with the head VAE the animators were trained against")
    head_vae, mesh = load_head_vae(source), load_template(actor)
    clips = DrivingClips(videos, work)
    return [score_run(run, actor, clips, head_vae, mesh) for run in run_dirs]


def markdown(results: Sequence[RunTransfer]) -> str:
    """Per run: mean Pearson per clip, and the summary metrics; best mean in bold."""
    if not results:
        return ""
    clips = list(results[0].scores)
    best = max(r.metrics()["transfer_r"] for r in results)
    lines = ["Transfer on real drivers (geometry: FaceMesh on the driver vs the avatar's decoded mesh; mean Pearson "
             "over the ten measures per clip; higher is better; jitter ratio best near 1; amplitude: the avatar's "
             "spread over the driver's, median over measures and clips, 1 = as lively).", "",
             "| run | " + " | ".join(clips) + " | mean | worst clip | mouth_open | worst measure | jitter ratio | "
             "amplitude | mouth amplitude |",
             "|---|" + "---|" * (len(clips) + 7)]
    for r in sorted(results, key=lambda r: -r.metrics()["transfer_r"]):
        m = r.metrics()
        mean = f"**{m['transfer_r']:.2f}**" if m["transfer_r"] == best else f"{m['transfer_r']:.2f}"
        lines.append(f"| {r.label} | " + " | ".join(f"{r.scores[c].mean_pearson():.2f}" for c in clips)
                     + f" | {mean} | {m['transfer_worst_clip_r']:.2f} | {m['transfer_mouth_r']:.2f} | "
                       f"{m['transfer_min_measure_r']:.2f} | {m['transfer_jitter_ratio']:.2f} | "
                       f"{m['transfer_amplitude']:.2f} | {m['transfer_mouth_amplitude']:.2f} |")
    return "\n".join(lines) + "\n"


def to_json(results: Sequence[RunTransfer]) -> dict[str, Any]:
    return {r.label: {"run_dir": str(r.run_dir), "features": r.features, "metrics": r.metrics(),
                      "clips": {clip: s.to_json() for clip, s in r.scores.items()}} for r in results}


def transfer_results(runs: Sequence[Path], drivers: Sequence[str | Path], cache: str | None,
                     work: Path) -> list[Any]:
    """Every run's transfer on ``drivers`` (:func:`score_grid`), grouped by the cache each trained on."""
    by_cache: dict[str, list[Path]] = {}
    for run in runs:
        by_cache.setdefault(str(cache) if cache else run_cache(run), []).append(run)
    results = []
    for cache_dir, group in by_cache.items():
        results += score_grid(group, CaptureCache(cache_dir), drivers, work)
    return results


def write_transfer_outputs(results: Sequence[Any], drivers: Sequence[str | Path], out: Path) -> list[Path]:
    """transfer_grid.md, .json and .png of :func:`transfer_results`."""
    table = markdown(results)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "transfer_grid.md", out / "transfer_grid.json", out / "transfer_grid.png"]
    atomic_write_text(written[0], table)
    atomic_write_text(written[1], json.dumps(to_json(results), indent=1))
    plt = pyplot()
    ordered = sorted(results, key=lambda r: -r.metrics()["transfer_r"])
    figure, axes = plt.subplots(figsize=(8, max(2.0, 0.4 * len(ordered) + 1.0)))
    values = [r.metrics()["transfer_r"] for r in ordered]
    bars = axes.barh(range(len(ordered)), values, color="C0")
    axes.set_yticks(range(len(ordered)), [r.label for r in ordered])
    axes.invert_yaxis()
    axes.bar_label(bars, labels=[format_number(v) for v in values], padding=3, fontsize=8)
    axes.axvline(0.8, color="k", linestyle=":", linewidth=1)
    axes.set_xlabel(f"transfer: mean Pearson over {len(drivers)} real driver(s) (higher is better; goal 0.8)")
    axes.margins(x=0.15)
    save_figure(figure, written[2])
    return written


def write_transfer(score_files: Sequence[Path], drivers: Sequence[str], out: Path, cache: str | None,
                   work: Path) -> list[Path]:
    """Score every run's transfer on ``drivers``; writes transfer_grid.md, .json and .png."""
    results = transfer_results([path.parent for path in score_files], drivers, cache, work)
    print(markdown(results))
    return write_transfer_outputs(results, drivers, out)
