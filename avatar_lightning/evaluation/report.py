"""The comparison's files: ``scores.md`` / ``scores.csv`` and a plot per metric of any set of rows (``compare``),
and ``evaluate``'s report (``evaluation.md`` with the rule and the chosen cell, ``evaluation.json``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avatar_lightning.cache.files import atomic_write_text
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.evaluation.candidates import Scores
from avatar_lightning.evaluation.cross_identity import cross_identity_heat_map, cross_identity_markdown
from avatar_lightning.evaluation.evaluate import SELECTION_RULE, Evaluation
from avatar_lightning.evaluation.plots import bar_chart, per_frame_plot
from avatar_lightning.evaluation.tables import Row, csv_text, markdown_table


def write_outputs(rows: Sequence[Row], metrics: Sequence[str], out: Path) -> tuple[str, list[Path]]:
    """Write table, CSV and plots into ``out``; returns the table and the files written."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, metrics)
    written = [out / "scores.md", out / "scores.csv"]
    atomic_write_text(written[0], table)
    atomic_write_text(written[1], csv_text(rows))
    for metric in metrics:
        if bar_chart(rows, metric, out / f"{metric}.png"):
            written.append(out / f"{metric}.png")
        else:
            print(f"warning: no run has a value for {metric}; no bar chart", file=sys.stderr)
    for metric in metrics:
        if per_frame_plot(rows, metric, out / f"per_frame_{metric}.png"):
            written.append(out / f"per_frame_{metric}.png")
    return table, written


TABLE_METRICS = ("val_latent_mse", "latent_mse", "blend_mse", "jitter_ratio", "psnr_face", "ssim_face", "lpips_face",
                 "psnr_head", "ssim_head", "psnr", "ssim", "lpips", "reenact_r", "reenact_amplitude",
                 "reenact_mouth_amplitude", "identity", "xid_relative_error", "transfer_r")


def evaluation_rows(evaluation: Evaluation, cache: CaptureCache) -> list[Row]:
    """The evaluated candidates as table rows: runs in the order of the choice (by validation), then the rest."""
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


def write_report(evaluation: Evaluation, cache: CaptureCache, out: Path, transfer_table: str = "") -> list[Path]:
    """Tables, plots and ``evaluation.json`` into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    rows = evaluation_rows(evaluation, cache)
    metrics = [m for m in TABLE_METRICS if any(r.metrics.get(m) is not None for r in rows)]
    table, written = write_outputs(rows, metrics, out)
    cross = cross_identity_markdown(evaluation.scores, evaluation.drivers, evaluation.blend_shapes)
    chosen = evaluation.chosen
    lines = ["# Evaluation", "",
             f"Chosen cell: **{chosen.candidate.label}** (`{chosen.candidate.run_dir}`), validation latent MSE "
             f"{chosen.metrics['val_latent_mse']:.4g}.", f"Rule: {SELECTION_RULE}.", "",
             f"Images: {evaluation.image_frames} test frames spread evenly over the test sequence(s), from camera(s) "
             f"{', '.join(evaluation.cameras) or 'none'}; the head posed by the capture's tracked pose; the face box "
             "is the projected tracked face widened by 10 %, the head (`psnr_head`, `ssim_head`) the pixels the "
             "tracked mesh (face and head shell) covers in the real frame. Self-reenactment: `reenact_r` is the mean "
             "Pearson correlation of the ten expression measures (FaceMesh) between the rendered and the real frames, "
             "`reenact_amplitude` the median of their spread ratios (1 = as lively as the person, 0 = frozen), "
             "`reenact_mouth_amplitude` mouth opening's, `identity` dlib's face-recognition distance of each rendered "
             "frame to its real frame (lower is better; the same person is below 0.6).", "",
             *(f"Note: {n}." for n in evaluation.notes), "", "## Every cell and baseline", "", table]
    if cross:
        lines += ["## Cross-identity", "", cross]
        atomic_write_text(out / "cross_identity.md", cross)
        written.append(out / "cross_identity.md")
        if cross_identity_heat_map(evaluation.scores, evaluation.blend_shapes, out / "cross_identity_shapes.png"):
            written.append(out / "cross_identity_shapes.png")
    if evaluation.ladder is not None:
        ladder = evaluation.ladder
        lines += ["## Self-reenactment: where motion is lost", "", ladder.markdown(), ""]
        if ladder.video is not None and ladder.contact_sheet is not None:
            lines += [f"Video (real | avatar | reference): `{ladder.video.name}`; the person's extreme frames beside "
                      f"the avatar's: `{ladder.contact_sheet.name}`.", ""]
            written += [ladder.video, ladder.contact_sheet]
    if transfer_table:
        lines += ["## Transfer on real drivers", "", transfer_table]
    atomic_write_text(out / "evaluation.md", "\n".join(lines))
    atomic_write_text(out / "evaluation.json", json.dumps(evaluation.to_json(), indent=1))
    return [out / "evaluation.md", out / "evaluation.json", *written]
