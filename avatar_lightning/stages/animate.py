"""``python -m avatar_lightning animate``: a driving video of anyone in, the actor's avatar performing it out.

The chain and its options are described in :mod:`avatar_lightning.avatar.animate`; this module is the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import cv2
import torch

from avatar_lightning.avatar.animate import DRIVING_MAX_SIDE, animate_video, check_output_video
from avatar_lightning.avatar.folder import load_avatar
from avatar_lightning.avatar.precision import PRECISIONS, resolve_precision
from avatar_lightning.avatar.runtime import BACKENDS
from avatar_lightning.errors import CacheError


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning animate",
        description="Animate an avatar (from `export`) with a driving video of any person; writes an mp4.",
    )
    parser.add_argument("--driving", required=True, help="driving video (mp4, mov, avi, webm)")
    parser.add_argument("--avatar", required=True, help="avatar folder written by `python -m avatar_lightning export`")
    parser.add_argument("--out", required=True, help="output video, e.g. out.mp4")
    view = parser.add_mutually_exclusive_group()
    view.add_argument("--camera", help="render from this capture camera (default: the first)")
    view.add_argument("--orbit", action="store_true", help="render from a novel view orbiting the head")
    parser.add_argument("--side-by-side", action="store_true", help="put the driving frame left of the avatar")
    parser.add_argument("--pose", default="fixed", choices=("fixed", "driving"),
                        help="head pose: the actor's average (fixed) or the driving head's rotation relative to its "
                             "first frame (driving)")
    parser.add_argument("--expression", default="animator", choices=("animator", "retarget"),
                        help="animator: the paper's chain (the latent gives blend weights and texture); retarget: the "
                             "mesh takes the driver's own fitted blend weights (tracked_blend), the texture the latent")
    parser.add_argument("--background", help="an image to composite over instead of the camera's clean plate")
    parser.add_argument("--work", help="keep the ingested driving cache here (default: a temporary folder)")
    parser.add_argument("--chunk", type=int, default=16, help="frames rendered per batch")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (CUDA where present)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="the networks' arithmetic: auto (bf16 where the CPU or GPU does it natively, else 32), "
                             "32, bf16, or 16 (CUDA)")
    parser.add_argument("--backend", default="torch", choices=BACKENDS,
                        help="how the head VAE decoder and the re-render U-Net run: torch (default), onnxruntime "
                             "(float32; faster than torch in float32 on CPUs without native bf16, see "
                             "benchmarks/backends.py) or compile (torch.compile)")
    parser.add_argument("--driving-size", type=int, default=DRIVING_MAX_SIDE, metavar="PIXELS",
                        help="scale larger driving frames down to this longer side on ingest (default: %(default)s)")
    parser.add_argument("--score", action="store_true",
                        help="then score the transfer (score-transfer: FaceMesh on the driving video and on the "
                             "avatar's frames); writes <out>.transfer.json and .png")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.driving_size < 64:
        parser.error(f"--driving-size must be at least 64 pixels, got {args.driving_size}")
    check_output_video(args.out, args.driving, args.overwrite)
    background = None
    if args.background:
        image = cv2.imread(args.background, cv2.IMREAD_COLOR)
        if image is None:
            raise CacheError(f"{args.background}: not a readable image")
        background = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else None
    try:
        device = device or torch.device(args.device)
        precision = resolve_precision(args.precision, device, args.backend)
    except (RuntimeError, ValueError) as error:
        parser.error(str(error))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device here")
    avatar = load_avatar(args.avatar)
    report = animate_video(args.driving, avatar, args.out, args.work, args.camera, args.orbit, args.side_by_side,
                           background, args.chunk, not args.no_progress, args.pose, args.expression,
                           args.driving_size, precision, device, args.backend)
    faceless = (f"; no face in {report.frames_without_face} frames (features interpolated from neighbours, "
                "every frame rendered)" if report.frames_without_face else "")
    print(f"wrote {report.out}: {report.frames} frames at {report.fps:g} fps in {report.seconds:.1f} s "
          f"({report.frames_per_second:.1f} frames/s on {device.type}, {args.backend}, precision {precision})"
          f"{faceless}")
    if args.score:
        from avatar_lightning.evaluation.transfer_score import markdown_table, score_videos, write_report

        score, driver, rendered = score_videos(args.driving, report.avatar_spec)
        json_path, png_path = write_report(score, driver, rendered, Path(args.out).with_suffix(".transfer"),
                                           title=f"{args.driving} -> {args.avatar}")
        print(markdown_table(score))
        print(f"wrote {json_path} and {png_path}")
    return 0
