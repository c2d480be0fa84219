"""Quality at equal time: today's training settings against the previous defaults, for the same wall time.

    python benchmarks/quality_at_equal_time.py rerender --cache data/actor --minutes 8
    python benchmarks/quality_at_equal_time.py head_vae --cache data/actor --minutes 8

A faster network is only a win if it is not worse after the same training time. Each arm is trained by the
real command line (``fit --config experiments/<model>.yaml``: the same data, seed, batch and learning rate, no
data-loader workers so both get the same cores) for ``--minutes`` of wall time (Lightning's ``max_time``), then
scored by ``test`` on the cache's held-out test split from its ``last.ckpt``. The candidate is the experiment file
as it is now; the baseline is the same file with the previous defaults put back:

- ``rerender``: the plain U-Net at full resolution (``depth 5, width 32, unshuffle 1``); scores: PSNR / SSIM of
  I_out against the captured frames (needs ``renders/head_vae/<camera>``: ``render-mesh`` after the head VAE);
- ``head_vae``: NCHW memory (``channels_last false``) and float32 training (``--trainer.precision 32-true``);
  scores: PSNR / SSIM of the reconstructed textures.

The goal: the candidate's test PSNR no worse than the baseline's by more than 0.5 dB. ``--cache``: the demo's
``demo/actor`` or a real actor's prepared cache. Measure on an idle machine: the budget is wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _timing import experiment  # a sibling module: benchmarks run as `python benchmarks/X.py`

REPO = Path(__file__).resolve().parent.parent
# model -> the previous defaults, as command-line overrides of experiments/<model>.yaml
BASELINES = {
    "rerender": ["--model.init_args.depth=5", "--model.init_args.width=32", "--model.init_args.unshuffle=1"],
    "head_vae": ["--model.init_args.channels_last=false", "--trainer.precision=32-true"],
}
GOAL_DB = 0.5


def settings(model: str) -> dict[str, Any]:
    """What the experiment file sets now: the model's init_args and the trainer's precision."""
    config = experiment(model)
    return {"model": config["model"]["init_args"], "precision": config["trainer"].get("precision", "32-true")}


def _cli(args: list[str]) -> None:
    env = {**os.environ, "WANDB_MODE": "offline"}
    result = subprocess.run([sys.executable, "-m", "avatar_lightning", *args], cwd=REPO, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"`{' '.join(args[:3])} ...` failed:\n{result.stderr[-3000:]}")


def _metrics(root: Path, key: str) -> dict[str, float]:
    """The row of the CSV log under ``root`` that holds ``key`` (the test run's)."""
    for path in sorted(root.rglob("metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get(key):
                    return {k: float(v) for k, v in row.items() if v and k.startswith("test/")}
    raise SystemExit(f"no {key} in any metrics.csv under {root}")


def _steps(root: Path) -> int:
    steps = 0
    for path in root.rglob("metrics.csv"):
        with path.open() as f:
            steps = max([steps, *(int(r["step"]) for r in csv.DictReader(f) if r.get("step"))])
    return steps


def train_and_test(model: str, name: str, overrides: list[str], cache: Path, minutes: float, batch: int | None,
                   work: Path) -> dict[str, Any]:
    """Fit the experiment file plus ``overrides`` for ``minutes`` of wall time, then test its last checkpoint."""
    runs = work / name
    common = ["--config", str(REPO / "experiments" / f"{model}.yaml"), f"--data.init_args.cache_dir={cache}",
              "--data.init_args.num_workers=0", f"--trainer.default_root_dir={runs}",
              f"--trainer.logger.init_args.save_dir={runs}", "--trainer.enable_progress_bar=false", *overrides,
              *([f"--data.init_args.batch_size={batch}"] if batch else [])]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    seconds = round(minutes * 60)
    _cli(["fit", *common, f"--trainer.max_time=00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}",
          "--trainer.max_steps=-1", "--trainer.val_check_interval=100", "--trainer.limit_val_batches=2"])
    fit_seconds = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    steps = _steps(runs)
    checkpoint = next(runs.rglob("last.ckpt"))
    test_runs = work / f"{name}_test"
    _cli(["test", *common, f"--trainer.logger.init_args.save_dir={test_runs}", f"--ckpt_path={checkpoint}"])
    scores = _metrics(test_runs, "test/psnr")
    row = {"name": name, "overrides": overrides, "minutes": minutes, "fit_seconds": fit_seconds, "steps": steps,
           "test_psnr": scores["test/psnr"], "test_ssim": scores.get("test/ssim"),
           "load_average_before": load_before, "load_average_after": load_after}
    arm = " ".join(overrides) or "(the file as it is)"
    print(f"{name:<10} {arm}: {steps} steps in {fit_seconds / 60:.1f} min, test PSNR {row['test_psnr']:.2f} dB, "
          f"SSIM {row['test_ssim']:.4f} (load {load_before:.1f} -> {load_after:.1f})", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(BASELINES), help="which network's training to compare")
    parser.add_argument("--cache", type=Path, required=True, help="the actor's capture cache")
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall time per arm (default 8)")
    parser.add_argument("--batch", type=int, help="batch size (default: the experiment file's)")
    parser.add_argument("--json", type=Path, help="default benchmarks/results/quality_<model>.json")
    args = parser.parse_args()
    json_path = args.json or REPO / "benchmarks" / "results" / f"quality_{args.model}.json"
    if not (args.cache / "manifest.json").is_file():
        raise SystemExit(f"{args.cache}: not a capture cache (no manifest.json)")
    print(f"quality at equal time, {args.model}: {args.minutes:g} min each on {args.cache}, {os.cpu_count()} CPUs; "
          f"baseline: {' '.join(BASELINES[args.model])}; candidate: experiments/{args.model}.yaml as it is "
          f"({settings(args.model)})", flush=True)
    with tempfile.TemporaryDirectory(prefix="quality-at-equal-time-") as scratch:
        rows = [train_and_test(args.model, name, overrides, args.cache.resolve(), args.minutes, args.batch,
                               Path(scratch))
                for name, overrides in (("baseline", BASELINES[args.model]), ("candidate", []))]
    delta = rows[1]["test_psnr"] - rows[0]["test_psnr"]
    verdict = "meets" if delta >= -GOAL_DB else "misses"
    print(f"\ncandidate - baseline: {delta:+.2f} dB test PSNR after equal time ({verdict} the goal: >= -{GOAL_DB} dB); "
          f"{rows[1]['steps'] / max(rows[0]['steps'], 1):.1f}x the training steps")
    result = {"model": args.model, "machine": platform.platform(), "cpus": os.cpu_count(), "cache": str(args.cache),
              "minutes": args.minutes, "batch": args.batch, "candidate": settings(args.model), "rows": rows,
              "psnr_delta_db": delta, "goal_db": -GOAL_DB, "meets_goal": delta >= -GOAL_DB,
              "unix_time": int(time.time())}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2))
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
