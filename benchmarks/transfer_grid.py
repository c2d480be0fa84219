"""The animator grid (backbone x features x residual, and how features are made relative) scored on real drivers.

    python benchmarks/transfer_grid.py --actor demo/actor                          # after `tasks.py demo`
    python benchmarks/transfer_grid.py --actor demo/actor --variants mediapipe:sequence mediapipe_blendshapes:running

For each variant ``FEATURES:RELATIVE`` the actor cache is copied (frames are hard-linked, so it is cheap), its
features are re-extracted that way, and the demo's six animator cells (MLP / CNN / LSTM, residual off / on) are
trained with the demo's schedule (``--steps``) against the latents already in the cache (the head VAE that
``encode`` recorded, so every variant decodes through the same head). Then ``compare --drivers`` scores every
cell on the real driving clips of ``../shared/data/driving`` (geometry: FaceMesh on the driver vs the decoded
mesh, :mod:`avatar_lightning.evaluation.transfer_grid`) beside its held-out latent MSE. Prints one table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DRIVING = ROOT.parent / "shared" / "data" / "driving"


def copy_cache(source: Path, target: Path) -> None:
    """A copy whose big per-frame arrays are hard links (read-only here) and whose manifest and features are own."""
    if target.exists():
        shutil.rmtree(target)

    def link_or_copy(src: str, dst: str) -> None:
        if "/features/" in src or src.endswith("manifest.json"):
            shutil.copy2(src, dst)
        else:
            os.link(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actor", required=True, type=Path, help="an actor cache with latents/head_vae (the demo's)")
    parser.add_argument("--variants", nargs="+", default=["mediapipe:sequence", "mediapipe:running",
                                                          "mediapipe_blendshapes:none",
                                                          "mediapipe_blendshapes:running"])
    parser.add_argument("--steps", type=int, default=1500, help="animator steps per cell (the demo's)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/avatar_lightning_transfer_grid"))
    parser.add_argument("--clips", nargs="*", help="driving videos (default: ../shared/data/driving/*.mp4)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "transfer_grid.json")
    args = parser.parse_args()

    from avatar_lightning.features.run import extract_features
    from avatar_lightning.stages.compare import main as compare_main
    from avatar_lightning.stages.demo import EXPERIMENTS, _fit, grid

    clips = [str(c) for c in (args.clips or sorted(DRIVING.glob("*.mp4")))]
    if not clips:
        print(f"no driving clips (looked in {DRIVING})", file=sys.stderr)
        return 1
    results = {"actor": str(args.actor), "steps": args.steps, "clips": [Path(c).name for c in clips],
               "threads": torch.get_num_threads(), "variants": {}}
    for variant in args.variants:
        features, _, relative = variant.partition(":")
        folder = args.work / variant.replace(":", "_")
        actor = folder / "actor"
        start = time.perf_counter()
        copy_cache(args.actor, actor)
        extract_features(actor, features, relative=relative or "none", progress=False)
        runs = folder / "runs"
        torch.set_num_threads(1)  # as the demo: the small animators run faster on one thread
        for cell in grid(features):
            _fit(["--config", str(EXPERIMENTS / f"{cell}.yaml"), f"--data.init_args.cache_dir={actor}",
                  f"--trainer.default_root_dir={runs}", f"--trainer.logger.init_args.save_dir={runs}",
                  f"--trainer.max_steps={args.steps}", "--trainer.val_check_interval=500",
                  f"--model.init_args.lr_decay_every={max(args.steps // 30, 1)}",
                  "--trainer.enable_progress_bar=false"])
        torch.set_num_threads(2)
        report = folder / "report"
        compare_main([str(runs), "--out", str(report), "--drivers", *clips, "--cache", str(actor),
                      "--work", str(args.work / "drivers")])
        transfer = json.loads((report / "transfer_grid.json").read_text())
        latent = {}
        for scores in runs.rglob("scores.json"):
            data = json.loads(scores.read_text())
            latent[data["label"]] = data["metrics"]["latent_mse"]
        results["variants"][variant] = {label: {**cell["metrics"], "latent_mse": latent.get(label),
                                                "per_clip": {c: s["summary"]["mean_pearson"]
                                                             for c, s in cell["clips"].items()}}
                                        for label, cell in transfer.items()}
        results["variants"][variant]["_seconds"] = time.perf_counter() - start
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    print("\n| variant | cell | transfer r (mean of clips) | worst clip | mouth_open | worst measure | jitter | "
          "held-out latent MSE |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, cells in results["variants"].items():
        for label, m in cells.items():
            if label.startswith("_"):
                continue
            print(f"| {variant} | {label} | {m['transfer_r']:.3f} | {m['transfer_worst_clip_r']:.2f} | "
                  f"{m['transfer_mouth_r']:.2f} | {m['transfer_min_measure_r']:.2f} | "
                  f"{m['transfer_jitter_ratio']:.2f} | {m['latent_mse']:.4f} |")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
