"""Transfer fidelity on real drivers: each avatar driven by each real clip, scored by ``score-transfer``'s metric.

    python benchmarks/transfer.py --avatar demo/avatar                      # the six clips of ../shared
    python benchmarks/transfer.py --avatar demo/avatar --geometry-only      # no rendering: seconds, not minutes
    python benchmarks/transfer.py --avatar A --avatar B --json benchmarks/results/transfer.json

Two scores per avatar and clip, both against FaceMesh on the driving frames:

- ``video``: ``animate`` writes the avatar video (fixed pose, first capture camera), FaceMesh reads it back;
  this is the user's view, everything included;
- ``geometry``: the same measures on the avatar's decoded mesh (:func:`transfer_score.mesh_measures`), no
  rendering; the gap to ``video`` is what rasterising, the U-Net and FaceMesh on the output lose.

Goal (issue 16): mean Pearson >= 0.8 and mouth_open >= 0.9 on every clip, no measure below 0.6, jitter ratio
in 0.8-1.25. The driving clips are real people (``../shared/data/driving``, see its SOURCES.md); the script
refuses to run without them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DRIVING = ROOT.parent / "shared" / "data" / "driving"


def geometry_measures(avatar: Any, cache_dir: Path) -> np.ndarray:
    from avatar_lightning.avatar.animate import stream_latents
    from avatar_lightning.cache import CaptureCache
    from avatar_lightning.cache.layout import feature_array
    from avatar_lightning.evaluation.transfer_score import mesh_measures

    features = CaptureCache(cache_dir).array(feature_array(avatar.features))
    parts = []
    with torch.no_grad():
        for _, z in stream_latents(avatar, features, 64):
            _, blend = avatar.head_vae.decode(z)
            parts.append(mesh_measures(avatar.mesh, blend))
    return np.concatenate(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avatar", action="append", required=True, help="an exported avatar folder (repeatable)")
    parser.add_argument("--clips", nargs="*", help="driving videos (default: every mp4 in ../shared/data/driving)")
    parser.add_argument("--work", default="/tmp/avatar_lightning_transfer", help="cached driving caches, videos")
    parser.add_argument("--geometry-only", action="store_true", help="skip rendering and the video score")
    parser.add_argument("--expression", default="animator", choices=("animator", "retarget"),
                        help="animate's --expression (retarget: the driver's own tracked_blend weights shape the mesh)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    from avatar_lightning.avatar import load_avatar
    from avatar_lightning.avatar.animate import animate_cache
    from avatar_lightning.cache import CaptureCache
    from avatar_lightning.evaluation.transfer_score import score_measures, track_video, write_report

    clips = [Path(c) for c in args.clips] if args.clips else sorted(DRIVING.glob("*.mp4"))
    if not clips:
        print(f"no driving clips (looked in {DRIVING})", file=sys.stderr)
        return 1
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from avatar_lightning.evaluation.transfer_grid import DrivingClips

    driving = DrivingClips(clips, work)  # ingested once, features kept between avatars and runs
    drivers = {clip: driving.tracked(clip) for clip in clips}
    results: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "expression": args.expression,
                               "threads": torch.get_num_threads(), "avatars": {}}
    for avatar_dir in args.avatar:
        avatar = load_avatar(avatar_dir)
        rows: dict[str, Any] = {}
        for clip in clips:
            cache_dir = driving.cache(clip, avatar.extractor, avatar.features, avatar.relative).root
            driver = drivers[clip].measures
            row: dict[str, Any] = {}
            if args.expression == "retarget":
                from avatar_lightning.cache.layout import feature_array
                from avatar_lightning.evaluation.transfer_score import mesh_measures
                from avatar_lightning.features.run import extract_features

                if not CaptureCache(cache_dir).has(feature_array("tracked_blend")):
                    extract_features(cache_dir, "tracked_blend", progress=False)
                weights = CaptureCache(cache_dir).read(feature_array("tracked_blend"))
                mesh = mesh_measures(avatar.mesh, weights)
            else:
                mesh = geometry_measures(avatar, cache_dir)
            geometry = score_measures(driver, mesh, drivers[clip].fps)
            row["geometry"] = geometry.to_json()
            if not args.geometry_only:
                video = work / f"{Path(avatar_dir).parent.name}.{args.expression}.{clip.stem}.mp4"
                start = time.perf_counter()
                animate_cache(avatar, CaptureCache(cache_dir), video, expression=args.expression)
                seconds = time.perf_counter() - start
                tracked = track_video(str(video))
                score = score_measures(driver, tracked.measures, drivers[clip].fps)
                write_report(score, driver, tracked.measures, video.with_suffix(".transfer"),
                             title=f"{avatar_dir} driven by {clip.name}")
                row["video"] = {**score.to_json(), "animate_seconds": seconds}
            rows[clip.name] = row
            summary = " | ".join(f"{kind} r {row[kind]['summary']['mean_pearson']:.2f} mouth "
                                 f"{row[kind]['summary']['mouth_open_pearson'] or 0:.2f} jitter "
                                 f"{row[kind]['summary']['jitter_ratio'] or float('nan'):.2f}"
                                 for kind in ("geometry", "video") if kind in row)
            print(f"{avatar_dir} {clip.name}: {summary}", flush=True)
        results["avatars"][str(avatar_dir)] = rows
    kinds = ("geometry",) if args.geometry_only else ("geometry", "video")
    print("\n| avatar | clip | " + " | ".join(f"{k} mean r | {k} mouth r | {k} min r | {k} jitter" for k in kinds)
          + " |")
    print("|---|---|" + "---|" * (4 * len(kinds)))
    for avatar_dir, rows in results["avatars"].items():
        for clip, row in rows.items():
            cells = []
            for kind in kinds:
                s = row[kind]["summary"]
                cells += [f"{s['mean_pearson']:.2f}", f"{s['mouth_open_pearson'] or 0:.2f}", f"{s['min_pearson']:.2f}",
                          f"{s['jitter_ratio'] or float('nan'):.2f}"]
            print(f"| {Path(avatar_dir).parent.name}/{Path(avatar_dir).name} | {clip} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
