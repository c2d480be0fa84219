"""``python -m avatar_lightning prepare``: real footage of one actor -> a capture cache (paper §4).

See :mod:`avatar_lightning.capture.prepare` for the steps; this module is the command line.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from rich.logging import RichHandler

from avatar_lightning.progress import PhaseProgress


def main(argv: Sequence[str]) -> int:
    from avatar_lightning.capture.prepare import PrepareOptions, prepare_capture

    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning prepare",
        description="Turn a capture of one real actor (1..N synchronised cameras) into a capture cache: frames, "
                    "cameras (given or estimated), the actor's template with the 17 shared blend shapes and their "
                    "own, per-frame head pose, blend weights and UV textures, clean plates, and a train / val / "
                    "held-out test split. "
                    "A report (image grid, reprojection error) lands in <out>/report/.",
    )
    parser.add_argument("--video", action="append", required=True, metavar="PATH[@x,y,w,h]",
                        help="one camera (repeat for each, in order): a video file, or the region x,y,w,h (pixels) "
                             "of one, e.g. a grid video holding several cameras")
    parser.add_argument("--out", required=True, help="capture cache folder to create")
    parser.add_argument("--calibration", help="JSON with the cameras in OpenCV conventions (K, R, t, width, height, "
                                              "optional dist), one per --video in order; estimated when absent")
    parser.add_argument("--clean-plate", action="append", default=[], metavar="IMAGE",
                        help="a frame of the empty scene per camera (repeat, in --video order); estimated when absent")
    parser.add_argument("--test-seconds", type=float,
                        help="held-out tail (default: the paper's 30 s, or 20 %% of a clip shorter than 2 min)")
    parser.add_argument("--val-seconds", type=float,
                        help="validation before the tail (default 10 s, or 10 %% of a clip shorter than 2 min)")
    parser.add_argument("--texture-size", type=int, default=128, help="side of the UV textures (default 128)")
    parser.add_argument("--max-side", type=int, default=PrepareOptions.max_side, metavar="PIXELS",
                        help="scale frames down so their longer side is at most this (default %(default)s; 4K "
                             "footage would cost 25 MB a frame per camera); 0 keeps the videos' size. A calibration "
                             "file and clean plates stay at the videos' size: they are scaled alike")
    parser.add_argument("--no-head-shell", action="store_true",
                        help="leave the template at the face oval (no hair, skull or ears fitted to the person's "
                             "silhouette): the re-render U-Net then paints them")
    parser.add_argument("--personal-shapes", type=int, default=PrepareOptions.personal_shapes, metavar="PAIRS",
                        help="pairs of the actor's own blend shapes, learnt from the training frames where the 17 "
                             "shared ones cannot follow their face (default %(default)s; 0: the shared ones alone)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache at --out")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])
    options = PrepareOptions(calibration=args.calibration, clean_plates=tuple(args.clean_plate),
                             test_seconds=args.test_seconds, val_seconds=args.val_seconds,
                             texture_size=args.texture_size, max_side=args.max_side or None,
                             overwrite=args.overwrite, head_shell=not args.no_head_shell,
                             personal_shapes=args.personal_shapes)
    with PhaseProgress(width=26) as progress:
        cache = prepare_capture(args.video, args.out, options, progress)
    print(cache.describe())
    fit = cache.manifest.meta["prepare"]["fit"]["cameras"]
    for name, stats in fit.items():
        share = stats["median_reprojection_of_face_height"]
        print(f"{name}: {stats['frames_with_face']} frames with a face, median reprojection error "
              f"{stats['median_reprojection_px']:.2f} px ({100 * share:.2f} % of the face height)")
    print(f"report: {cache.root / 'report'}")
    return 0
