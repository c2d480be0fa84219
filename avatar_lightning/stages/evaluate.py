"""``python -m avatar_lightning evaluate``: every animator cell beside the baselines, on everything we can measure.

Scores (:mod:`avatar_lightning.evaluation.evaluate`; the work: :func:`avatar_lightning.evaluation.run.run_evaluation`):
validation latent MSE (the one number the chosen cell is picked by), the held-out test sequence in latent,
blend-shape and image space (the full rendering against the captured frames), cross-identity scores on synthetic
drivers whose truth is known, and with ``--drivers`` the transfer score on real videos. Writes into ``--out``:
``evaluation.md`` (the rule, the chosen cell, the tables), ``scores.md`` / ``scores.csv`` and a bar chart per metric,
``cross_identity.md`` with a per-shape heat map, and ``evaluation.json`` with every number.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from avatar_lightning.evaluation.cross_identity import STANDARD_DRIVERS
from avatar_lightning.evaluation.evaluate import SELECTION_RULE
from avatar_lightning.evaluation.reenactment import LADDER_FRAMES
from avatar_lightning.evaluation.run import run_evaluation


def main(argv: Sequence[str]) -> int:
    from avatar_lightning.synth.generate import PRESETS

    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning evaluate",
        description="Score every animator cell and the baselines: validation (chooses), test latents, blend "
                    "shapes and images, cross-identity on synthetic drivers, transfer on real drivers.",
    )
    parser.add_argument("--runs", nargs="+", required=True, help="animator run folders, or folders of runs")
    parser.add_argument("--cache", required=True, help="the actor's capture cache the runs trained on")
    parser.add_argument("--out", required=True, type=Path, help="report folder")
    parser.add_argument("--rerender", help="the re-render U-Net checkpoint: renders the full chain for image "
                                           "metrics (without it: none, said in the report)")
    parser.add_argument("--head-vae", help="the head VAE checkpoint (default: the one that encoded --latents)")
    parser.add_argument("--latents", default="head_vae", help="latents/<name> the animators learned")
    parser.add_argument("--cameras", nargs="+", help="cameras for the image metrics (default: every camera)")
    parser.add_argument("--image-frames", type=int, default=50,
                        help="test frames rendered per camera, spread evenly (default %(default)s)")
    synthetic = parser.add_mutually_exclusive_group()
    synthetic.add_argument("--synthetic", choices=sorted(PRESETS), metavar="PRESET",
                           help="make the standard synthetic drivers at this preset (identities "
                                f"{', '.join(f'{i} {s}' for i, s in STANDARD_DRIVERS)}) for cross-identity scores")
    synthetic.add_argument("--synthetic-drivers", nargs="+", default=[], metavar="CACHE",
                           help="synthetic driver caches (`synth --identity K --style S`) for cross-identity scores")
    parser.add_argument("--drivers", nargs="+", default=[], metavar="VIDEO",
                        help="real driving videos: every run's transfer score on them")
    parser.add_argument("--work", type=Path, help="where driver caches are kept (default <out>/work)")
    parser.add_argument("--lpips-backbone", help="LPIPS's AlexNet file (default: torchvision's cache)")
    parser.add_argument("--ladder-frames", type=int, default=LADDER_FRAMES,
                        help="consecutive held-out frames the chosen cell's self-reenactment ladder, video and "
                             "contact sheet use (default %(default)s; 0: none)")
    args = parser.parse_args(argv)
    if args.image_frames < 1:
        parser.error("--image-frames must be at least 1")
    if args.ladder_frames < 0:
        parser.error("--ladder-frames must be 0 (none) or more")
    evaluation = run_evaluation(args.runs, args.cache, args.out, args.rerender, args.head_vae, args.latents,
                                args.cameras, args.image_frames, args.synthetic, args.synthetic_drivers,
                                args.drivers, args.work, args.lpips_backbone, args.ladder_frames)
    print((args.out / "evaluation.md").read_text())
    print(f"chosen: {evaluation.chosen.candidate.label} ({SELECTION_RULE})")
    return 0
