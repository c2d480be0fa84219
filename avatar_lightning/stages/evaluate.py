"""``python -m avatar_lightning evaluate``: every animator cell beside the baselines, on everything we can measure.

Scores (see :mod:`avatar_lightning.evaluation`): validation latent MSE (the one number the chosen cell is picked
by), the held-out test sequence in latent, blend-shape and image space (the full rendering against the captured
frames), cross-identity scores on synthetic drivers whose truth is known, and with ``--drivers`` the transfer
score on real videos. Writes into ``--out``: ``evaluation.md`` (the rule, the chosen cell, the tables),
``scores.md`` / ``scores.csv`` and a bar chart per metric, ``cross_identity.md`` with a per-shape heat map, and
``evaluation.json`` with every number.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError
from avatar_lightning.evaluation import SELECTION_RULE, STANDARD_DRIVERS, Evaluation, Scores

TABLE_METRICS = ("val_latent_mse", "latent_mse", "blend_mse", "jitter_ratio", "psnr_face", "ssim_face", "lpips_face",
                 "psnr", "ssim", "lpips", "xid_relative_error", "transfer_r")


def _rows(evaluation: Evaluation, cache: CaptureCache) -> list[Any]:
    from avatar_lightning.stages.compare import Row

    def order(s: Scores) -> tuple[bool, float]:
        value = s.metrics.get("val_latent_mse")
        return (s.candidate.kind != "run", value if s.candidate.kind == "run" and value is not None else np.inf)

    rows = []
    runs_first = sorted(evaluation.scores, key=order)  # stable: baselines and the reference keep their order
    for s in runs_first:  # runs in the order of the choice (by validation), then baselines and the reference
        c = s.candidate
        rows.append(Row(kind="run" if c.kind == "run" else "baseline", label=c.label, backbone=c.backbone,
                        features=c.features, residual=c.residual, split="test (val chooses)",
                        frames=len(s.per_frame.get("latent_mse", [])),
                        frames_scored=sum(v is not None for v in s.per_frame.get("latent_mse", [])),
                        metrics=dict(s.metrics), per_frame={k: [np.nan if v is None else v for v in vals]
                                                            for k, vals in s.per_frame.items()},
                        source=c.run_dir or cache.root))
    return rows


def cross_identity_markdown(scores: Sequence[Scores], drivers: Sequence[str], shapes: Sequence[str]) -> str:
    """Per driver and per blend shape: the relative blend error of each candidate (1 = predicting the mean)."""
    scored = [s for s in scores if s.cross_identity]
    if not scored:
        return ""
    lines = ["Cross-identity: the avatar driven by synthetic identities whose true expression is known. Relative "
             "blend error: squared error over the shapes the driver moves / the truth's variance, after removing "
             "each identity's mean (0 perfect, 1 = any constant prediction, lower is better).", "",
             "| driven by | " + " | ".join(drivers) + " | mean |", "|---|" + "---:|" * (len(drivers) + 1)]
    ordered = sorted(scored, key=lambda s: s.metrics.get("xid_relative_error") or np.inf)
    for s in ordered:
        cells = [s.cross_identity[d]["metrics"]["relative_error"] for d in drivers]
        lines.append(f"| {s.candidate.label} | " + " | ".join(_fmt(v) for v in cells)
                     + f" | **{_fmt(s.metrics.get('xid_relative_error'))}** |")
    lines += ["", "Per blend shape (mean over the drivers that move it):", "",
              "| driven by | " + " | ".join(shapes) + " |", "|---|" + "---:|" * len(shapes)]
    for s in ordered:
        means = _per_shape(s)
        lines.append(f"| {s.candidate.label} | " + " | ".join("n/a" if np.isnan(v) else f"{v:.2f}" for v in means)
                     + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _per_shape(s: Scores) -> np.ndarray:
    values = [[(d["per_shape"][name]["relative_error"]) for d in s.cross_identity.values()] for name in
              next(iter(s.cross_identity.values()))["per_shape"]]
    return np.array([np.mean([v for v in row if v is not None]) if any(v is not None for v in row) else np.nan
                     for row in values])


def cross_identity_heat_map(scores: Sequence[Scores], shapes: Sequence[str], path: Path) -> bool:
    """Candidates x blend shapes, the relative error averaged over the drivers; False when nothing was scored."""
    from avatar_lightning.stages.compare import _pyplot, _save_figure

    scored = [s for s in scores if s.cross_identity]
    if not scored:
        return False
    plt = _pyplot()
    grid = np.stack([_per_shape(s) for s in scored])
    figure, axes = plt.subplots(figsize=(1.0 + 0.45 * grid.shape[1], 1.2 + 0.4 * len(scored)))
    image = axes.imshow(np.minimum(grid, 2.0), cmap="viridis_r", vmin=0, vmax=2.0, aspect="auto")
    axes.set_xticks(range(grid.shape[1]), shapes, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(len(scored)), [s.candidate.label for s in scored], fontsize=8)
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            axes.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6, color="w" if value > 1 else "k")
    figure.colorbar(image, label="relative error (1 = predicting the mean; clipped at 2)")
    _save_figure(figure, path)
    return True


def write_report(evaluation: Evaluation, cache: CaptureCache, out: Path, transfer_table: str = "") -> list[Path]:
    """Tables, plots and ``evaluation.json`` into ``out``; returns the files written."""
    from avatar_lightning.stages.compare import _write_text, write_outputs

    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(evaluation, cache)
    metrics = [m for m in TABLE_METRICS if any(r.metrics.get(m) is not None for r in rows)]
    table, written = write_outputs(rows, metrics, out)
    cross = cross_identity_markdown(evaluation.scores, evaluation.drivers, evaluation.blend_shapes)
    chosen = evaluation.chosen
    lines = ["# Evaluation", "",
             f"Chosen cell: **{chosen.candidate.label}** (`{chosen.candidate.run_dir}`), validation latent MSE "
             f"{chosen.metrics['val_latent_mse']:.4g}.", f"Rule: {SELECTION_RULE}.", "",
             f"Images: {evaluation.image_frames} test frames spread evenly over the test sequence(s), from camera(s) "
             f"{', '.join(evaluation.cameras) or 'none'}; the head posed by the capture's tracked pose; the face box "
             "is the projected tracked mesh widened by 10 %.", "",
             *(f"Note: {n}." for n in evaluation.notes), "", "## Every cell and baseline", "", table]
    if cross:
        lines += ["## Cross-identity", "", cross]
        _write_text(out / "cross_identity.md", cross)
        written.append(out / "cross_identity.md")
        if cross_identity_heat_map(evaluation.scores, evaluation.blend_shapes, out / "cross_identity_shapes.png"):
            written.append(out / "cross_identity_shapes.png")
    if transfer_table:
        lines += ["## Transfer on real drivers", "", transfer_table]
    _write_text(out / "evaluation.md", "\n".join(lines))
    _write_text(out / "evaluation.json", json.dumps(evaluation.to_json(), indent=1))
    return [out / "evaluation.md", out / "evaluation.json", *written]


def run_evaluation(runs: Sequence[str | Path], cache_dir: str | Path, out: Path, rerender: str | Path | None = None,
                   head_vae: str | Path | None = None, latents: str = "head_vae",
                   cameras: Sequence[str] | None = None, image_frames: int = 50, synthetic: str | None = None,
                   synthetic_drivers: Sequence[str | Path] = (), drivers: Sequence[str | Path] = (),
                   work: Path | None = None, lpips_backbone: str | None = None) -> Evaluation:
    """The command's work, callable from the demo: evaluate, score real drivers, write the report."""
    from avatar_lightning.cache.layout import latent_source
    from avatar_lightning.checkpoints import load_model
    from avatar_lightning.evaluation import evaluate, find_runs, make_synthetic_drivers, require_truth
    from avatar_lightning.models.head_vae import load_head_vae
    from avatar_lightning.models.rerender import Rerenderer
    from avatar_lightning.nets.perceptual import load_lpips

    cache = CaptureCache(cache_dir)
    run_dirs = find_runs(runs)
    source = head_vae or latent_source(cache, latents)
    if source is None:
        raise CacheError(f"{cache.root}: no head VAE recorded for latents/{latents}; pass --head-vae (the checkpoint "
                         "that encoded the latents the animators learned)")
    vae = load_head_vae(source)
    model = load_model(Rerenderer, rerender) if rerender else None
    lpips = load_lpips(lpips_backbone) if model is not None else None  # None (said once) without its file
    work = work or out / "work"
    driver_dirs = [Path(d) for d in synthetic_drivers]
    for folder in driver_dirs:  # now, not after minutes of scoring
        require_truth(CaptureCache(folder))
    if synthetic:
        driver_dirs += make_synthetic_drivers(synthetic, work / "synthetic")
    evaluation = evaluate(run_dirs, cache, vae, model, latents, cameras, image_frames, driver_dirs, lpips)
    transfer_table = ""
    if drivers:
        from avatar_lightning.stages.compare import transfer_results, write_transfer_outputs
        from avatar_lightning.transfer_grid import markdown

        results = transfer_results(run_dirs, drivers, str(cache.root), work / "drivers")
        by_dir = {r.run_dir.resolve(): r for r in results}
        for s in evaluation.scores:
            if s.candidate.run_dir is not None and s.candidate.run_dir.resolve() in by_dir:
                s.metrics["transfer_r"] = by_dir[s.candidate.run_dir.resolve()].metrics()["transfer_r"]
        transfer_table = markdown(results)
        write_transfer_outputs(results, drivers, out)
    write_report(evaluation, cache, out, transfer_table)
    return evaluation


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
    args = parser.parse_args(argv)
    if args.image_frames < 1:
        parser.error("--image-frames must be at least 1")
    evaluation = run_evaluation(args.runs, args.cache, args.out, args.rerender, args.head_vae, args.latents,
                                args.cameras, args.image_frames, args.synthetic, args.synthetic_drivers,
                                args.drivers, args.work, args.lpips_backbone)
    print((args.out / "evaluation.md").read_text())
    print(f"chosen: {evaluation.chosen.candidate.label} ({SELECTION_RULE})")
    return 0
