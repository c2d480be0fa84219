"""Person-independent expression features x of every frame into a capture cache (paper §5; the ``features`` command).

Runs a registered extractor (``mediapipe`` offline everywhere; ``deca`` with the user's ``deca_model.tar``) over
one camera's frames through Lightning ``predict`` (``--devices``/``--num-nodes`` spread it over GPUs and
nodes) and writes ``features/<output>.npy (N, D)`` and ``features/<output>.valid.npy (N,)`` atomically. Frames
without a face are flagged, interpolated from their neighbours and counted. The manifest's ``meta.features``
records, per output, the extractor, camera, layout and settings.
"""

from __future__ import annotations

import contextlib
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from avatar_lightning.cache.layout import feature_array, frames_array, valid_array
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError
from avatar_lightning.features.extract import (
    RUNNING_WARMUP_SECONDS,
    FeatureExtraction,
    covering_spans,
    fill_and_normalise,
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
    frames = cache.array(frames_array(record.name))
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
        "source": f"{frames_array(record.name)} {list(frames.shape)}",
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
            "source": f"{frames_array(data.camera)} {list(frames.shape)}",
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
