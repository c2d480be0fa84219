"""Quality against training time on a real actor: ``demo --capture`` at several budgets, scored on his held-out tail.

    python benchmarks/anchor_budget.py                       # the shared anchor, levels 5 15 30 60 (hours)
    python benchmarks/anchor_budget.py --levels 5 15 --capture my_clip.mp4 --work /tmp/budget

A level of L minutes gives the head VAE and the re-render U-Net L/2 minutes each (Lightning's ``max_time``); the
animator grid keeps its steps, so a level's wall time is L plus a fixed part (prepare once, features, encode,
render, the grid, evaluation, export), printed beside it. Each level is a whole ``demo --capture`` run (the real
command, in a subprocess) on a copy of one prepared cache, so every level trains from the same frames and no level
sees another's runs. Scores are those of ``evaluate`` on the chosen cell (self-reenactment on the actor's held-out
test tail, at the prepared size): face PSNR / SSIM, head PSNR (the tracked mesh's pixels), the expression measures'
Pearson and amplitude (median, mouth opening), and dlib's identity distance beside his own frames' spread; and the
ladder's final rung (I_out from the animator's latents), and the reference's margin over predict-the-mean in face
and head PSNR. Writes ``anchor_budget.json`` and ``anchor_budget.png`` into ``--results``.

The default levels take about two and a half hours on a 2-core CPU; measure on an idle machine (the budget is wall
time, so anything else running takes steps from the models).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ANCHOR = REPO.parent / "shared" / "data" / "capture" / "anchor_71s.mp4"
SCORES = ("psnr_face", "ssim_face", "psnr_head", "reenact_r", "reenact_amplitude", "reenact_mouth_amplitude",
          "identity")
GOALS = {"psnr_face": ">= 24 dB", "ssim_face": ">= 0.85", "psnr_head": "none", "reenact_r": ">= 0.85",
         "reenact_amplitude": "0.8-1.25", "reenact_mouth_amplitude": ">= 0.8", "identity": "<= 0.35"}


def _demo(capture: Path, out: Path, minutes: float, size: int, animator_steps: int) -> float:
    """One ``demo --capture`` run into ``out``; its wall seconds. Its log goes to ``out/demo.log``."""
    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "avatar_lightning", "demo", "--capture", str(capture), "--out", str(out),
            "--capture-size", str(size), "--head-vae-minutes", f"{minutes / 2:g}",
            "--rerender-minutes", f"{minutes / 2:g}", "--animator-steps", str(animator_steps)]
    start = time.perf_counter()
    with (out / "demo.log").open("w") as log:
        code = subprocess.run(args, cwd=REPO, env={**os.environ, "WANDB_MODE": "offline"}, stdout=log,
                              stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"demo at {minutes:g} min failed (exit {code}); see {out / 'demo.log'}")
    return time.perf_counter() - start


def prepared(capture: Path, work: Path, size: int) -> Path:
    """The capture prepared once at ``size`` (kept in ``work`` for the next run of the benchmark)."""
    from avatar_lightning.capture.prepare import PrepareOptions, prepare_capture

    actor = work / "prepared" / f"actor_{size}"
    if not (actor / "manifest.json").is_file():
        prepare_capture([str(capture)], actor, PrepareOptions(overwrite=True, max_side=size))
    return actor


def level_scores(report: Path) -> dict[str, Any]:
    """The chosen cell's self-reenactment scores, the identity floor, the reference's margin over predict-the-mean
    (face box and head) and the ladder's last rung, from the report."""
    from avatar_lightning.evaluation.candidates import MEAN_LABEL, REFERENCE_LABEL

    evaluation = json.loads((report / "evaluation.json").read_text())
    chosen = evaluation["chosen"]["label"]
    metrics = next(c["metrics"] for c in evaluation["candidates"] if c["label"] == chosen)
    floor = next((n for n in evaluation["notes"] if "identity" in n), None)
    ladder = evaluation.get("ladder") or {}
    last = (ladder.get("rungs") or [{}])[-1]
    by_label = {c["label"]: c["metrics"] for c in evaluation["candidates"]}
    reference, mean = by_label.get(REFERENCE_LABEL, {}), by_label.get(MEAN_LABEL, {})
    margin = {k: reference[k] - mean[k] for k in ("psnr_face", "psnr_head")
              if reference.get(k) is not None and mean.get(k) is not None}
    return {"chosen": chosen, **{k: metrics.get(k) for k in SCORES}, "identity_note": floor,
            "reference_over_mean_db": margin,
            "ladder_last_rung": {k: last.get(k) for k in ("rung", "mean_pearson", "amplitude",
                                                           "mouth_open_amplitude")}}


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    minutes = [r["level_minutes"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(minutes, [r["psnr_face"] for r in rows], "o-", label="face PSNR (dB)")
    axes[0].axhline(24, color="grey", ls=":", label="goal 24 dB")
    axes[0].set_ylabel("dB")
    twin = axes[0].twinx()
    twin.plot(minutes, [r["ssim_face"] for r in rows], "s--", color="tab:orange", label="face SSIM")
    twin.set_ylabel("SSIM")
    lines = axes[0].get_lines() + twin.get_lines()
    axes[0].legend(lines, [line.get_label() for line in lines], loc="lower right", fontsize=8)
    for key, style in (("reenact_r", "o-"), ("reenact_amplitude", "s-"), ("reenact_mouth_amplitude", "^-")):
        axes[1].plot(minutes, [r[key] for r in rows], style, label=key.replace("reenact_", ""))
    axes[1].axhline(0.8, color="grey", ls=":")
    axes[1].set_ylim(0, 1.3)
    axes[1].legend(fontsize=8)
    axes[2].plot(minutes, [r["identity"] for r in rows], "o-", label="avatar to his frames")
    axes[2].axhline(0.35, color="grey", ls=":", label="goal 0.35")
    axes[2].legend(fontsize=8)
    axes[2].set_ylabel("dlib distance (lower is better)")
    for ax, title in zip(axes, ("pixels", "expression (Pearson, amplitude)", "identity"), strict=True):
        ax.set_xlabel("training minutes (head VAE + U-Net)")
        ax.set_title(title)
        ax.set_xscale("log")
        ax.set_xticks(minutes, [f"{m:g}" for m in minutes])
        ax.xaxis.set_minor_formatter(NullFormatter())  # the log axis' own 6x10^0 labels would overlap ours
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capture", type=Path, default=ANCHOR, help="the actor's clip (default: the shared anchor)")
    parser.add_argument("--levels", type=float, nargs="+", default=[5, 15, 30, 60],
                        help="training minutes per level, split evenly between the head VAE and the U-Net")
    parser.add_argument("--size", type=int, default=256, help="prepared frames' longer side (demo --capture-size)")
    parser.add_argument("--animator-steps", type=int, default=1500, help="steps per animator grid cell")
    parser.add_argument("--work", type=Path, default=Path("/tmp/anchor_budget"), help="scratch folder (large)")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if not args.capture.is_file():
        raise SystemExit(f"no capture at {args.capture}: pass --capture (the shared anchor lives in ../shared)")
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    actor = prepared(args.capture, args.work, args.size)
    prepare_seconds = time.perf_counter() - start
    rows: list[dict[str, Any]] = []
    for minutes in args.levels:
        out = args.work / f"level_{minutes:g}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(actor, out / "actor")  # the demo reuses a cache prepared from the same videos at this size
        seconds = _demo(args.capture, out, minutes, args.size, args.animator_steps)
        rows.append({"level_minutes": minutes, "wall_minutes": seconds / 60, **level_scores(out / "report")})
        rows.sort(key=lambda r: r["level_minutes"])
        _write(rows, args, prepare_seconds)  # after every level: a long run stopped part-way keeps what it measured


def _write(rows: list[dict[str, Any]], args: argparse.Namespace, prepare_seconds: float) -> None:
    header = ["training min", "wall min", *SCORES]
    print("\n| " + " | ".join(header) + " |\n|" + "---:|" * len(header))
    for r in rows:
        print("| " + " | ".join([_fmt(r["level_minutes"]), _fmt(r["wall_minutes"]),
                                 *[_fmt(r[k]) for k in SCORES]]) + " |")
    print("| goal | <= 30 | " + " | ".join(GOALS[k] for k in SCORES) + " |", flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    result = {"capture": str(args.capture), "size": args.size, "animator_steps": args.animator_steps,
              "prepare_minutes": prepare_seconds / 60, "machine": {"cpu": platform.processor() or platform.machine(),
                                                                    "cores": os.cpu_count()},
              "goals": GOALS, "levels": rows}
    (args.results / "anchor_budget.json").write_text(json.dumps(result, indent=1))
    _plot(rows, args.results / "anchor_budget.png")
    print(f"wrote {args.results / 'anchor_budget.json'} and anchor_budget.png", flush=True)


if __name__ == "__main__":
    main()
