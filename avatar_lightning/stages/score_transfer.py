"""``python -m avatar_lightning score-transfer``: driver vs avatar expression, measured on both videos' pixels.

See :mod:`avatar_lightning.evaluation.transfer_score` for what is measured and why it cannot be fooled by a frozen or
delayed avatar. Writes ``<out>.json`` and ``<out>.png`` and prints a per-measure table.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from avatar_lightning.evaluation.transfer_score import markdown_table, score_videos, write_report
from avatar_lightning.progress import PhaseProgress


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning score-transfer",
        description="Score how faithfully an avatar video follows its driving video: FaceMesh on both, scale-free "
                    "expression measures per frame, per-measure Pearson correlation, standardised MAE, jitter.",
    )
    parser.add_argument("--driving", required=True, help="the driving video (PATH, or PATH@x,y,w,h for a region)")
    parser.add_argument("--avatar-video", required=True,
                        help="the avatar video, one frame per driving frame (PATH or PATH@x,y,w,h; for an "
                             "`animate --side-by-side` video give the right half's region)")
    parser.add_argument("--out", help="report path without suffix (default: beside the avatar video, "
                                      "<avatar>.transfer)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.avatar_video.split("@")[0]).with_suffix(".transfer")
    if args.no_progress:
        score, driver, avatar = score_videos(args.driving, args.avatar_video)
    else:
        with PhaseProgress() as progress:
            score, driver, avatar = score_videos(args.driving, args.avatar_video, progress)
    json_path, png_path = write_report(score, driver, avatar, out, title=f"{args.driving} -> {args.avatar_video}")
    print(markdown_table(score))
    print(f"wrote {json_path} and {png_path}")
    return 0
