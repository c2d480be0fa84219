"""The ceiling of blend-space retargeting: each driver's own fitted blend weights put on the actor's mesh directly.

    python benchmarks/transfer_retarget.py --actor demo/actor --actor data/anchor

No animator, no head VAE: ``tracked_blend`` features of each real driving clip (the driver's own neutral template
and 17 blend weights, fitted by prepare's tracker) deform the actor's template, and the transfer metric compares
the mesh with FaceMesh on the driver (geometry, as ``compare --drivers``). It bounds what the ``tracked_blend``
animator cells could reach if the actor's latent space covered every driver expression; the gap to those cells is
what the actor's own performance (its coverage) and the head VAE lose.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DRIVING = ROOT.parent / "shared" / "data" / "driving"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actor", action="append", required=True, type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/avatar_lightning_transfer_grid/drivers"))
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "transfer_retarget.json")
    args = parser.parse_args()

    from avatar_lightning.cache import CaptureCache
    from avatar_lightning.cache.template import load_template
    from avatar_lightning.evaluation.transfer_grid import DrivingClips
    from avatar_lightning.evaluation.transfer_score import mesh_measures, score_measures

    clips = DrivingClips(sorted(DRIVING.glob("*.mp4")), args.work)
    if not clips.videos:
        print(f"no driving clips in {DRIVING}", file=sys.stderr)
        return 1
    results: dict[str, dict[str, dict]] = {}
    for actor in args.actor:
        mesh = load_template(CaptureCache(actor))
        rows = {}
        for video in clips.videos:
            weights = clips.features(video, "tracked_blend", "tracked_blend", "none")
            tracked = clips.tracked(video)
            rows[video.name] = score_measures(tracked.measures, mesh_measures(mesh, weights), tracked.fps).to_json()
        results[str(actor)] = rows
    print("| actor | " + " | ".join(v.name for v in clips.videos) + " | mean | mouth_open (mean) |")
    print("|---|" + "---|" * (len(clips.videos) + 2))
    for actor, rows in results.items():
        means = [r["summary"]["mean_pearson"] for r in rows.values()]
        mouth = [r["summary"]["mouth_open_pearson"] or 0.0 for r in rows.values()]
        print(f"| {actor} | " + " | ".join(f"{m:.2f}" for m in means) + f" | {np.mean(means):.2f} | "
              f"{np.mean(mouth):.2f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
