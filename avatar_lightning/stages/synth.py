"""``python -m avatar_lightning synth``: make the built-in synthetic actor (or another person's driving video)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from avatar_lightning.progress import PhaseProgress
from avatar_lightning.synth.generate import PRESETS, generate
from avatar_lightning.synth.performance import DRIVER_STYLES


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning synth",
        description="Write a synthetic multi-view capture (identity 0, the actor) or a one-camera driving video of "
                    "another person (identity K >= 1) into a capture cache, with ground truth and mp4 previews.",
    )
    parser.add_argument("--out", required=True, help="capture cache folder to create")
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS), help="size and length (default small)")
    parser.add_argument("--identity", type=int, default=0, help="0: the actor; K >= 1: another person driving")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the performance (default 0)")
    parser.add_argument("--style", default="default", choices=sorted(DRIVER_STYLES),
                        help="how the person performs: default (the actor's mix), speaking, emoting, fast, subtle, "
                             "asymmetric (the cross-identity drivers' styles)")
    parser.add_argument("--overwrite", action="store_true", help="replace a different cache already at --out")
    parser.add_argument("--no-preview", action="store_true", help="skip the mp4 previews")
    args = parser.parse_args(argv)

    with PhaseProgress() as progress:
        cache = generate(args.out, preset=args.preset, identity=args.identity, seed=args.seed,
                         overwrite=args.overwrite, previews=not args.no_preview, progress=progress,
                         style=args.style)
    print(cache.describe())
    seconds = cache.manifest.meta.get("seconds_to_generate", 0)
    print(f"made in {seconds:.1f} s" if progress.started else "already up to date")
    return 0
