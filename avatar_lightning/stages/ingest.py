"""``python -m avatar_lightning ingest``: a driving video -> a one-camera capture cache (:mod:`capture.ingest`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from avatar_lightning.capture.ingest import ingest_video
from avatar_lightning.progress import PhaseProgress


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning ingest",
        description="Turn a driving video (mp4, mov, avi, webm, ...) into a one-camera capture cache: frames, fps, "
                    "one test sequence 'drive'. Streams: memory stays flat in the video's length.",
    )
    parser.add_argument("--video", required=True, help="the video file")
    parser.add_argument("--out", required=True, help="capture cache folder to create")
    parser.add_argument("--crop", action="store_true",
                        help="crop each frame around the face (DECA's square box, smoothed over time)")
    parser.add_argument("--size", type=int,
                        help="output size: the square crop's side with --crop (default 512), else the longer side "
                             "(default: the video's own size)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache at --out")
    parser.add_argument("--ignore-decode-errors", action="store_true",
                        help="accept a video whose decoding reports damage (concealed frames may hold garbage)")
    args = parser.parse_args(argv)
    with PhaseProgress(width=14) as progress:
        cache = ingest_video(args.video, args.out, crop=args.crop, size=args.size, overwrite=args.overwrite,
                             strict=not args.ignore_decode_errors, progress=progress)
    print(cache.describe())
    rate = cache.manifest.meta["ingest"]["frame_rate"]
    if rate["variable"]:
        print(f"note: {args.video} has a variable frame rate; resampled to a constant {rate['fps']:g} fps by its "
              f"timestamps ({rate['ticks_repeated']} frames held, {rate['frames_dropped']} dropped)")
    return 0
