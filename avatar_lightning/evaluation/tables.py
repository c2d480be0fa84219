"""Animator runs and baselines as rows of one table: read from the ``scores.json`` every animator test writes,
ordered, and written as markdown (best values in bold) and CSV.

Baselines depend only on the features, so each (baseline, features) pair appears once however many runs share it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatar_lightning.errors import CacheError

SCORES = "scores.json"
DEFAULT_METRICS = ("latent_mse", "blend_mse", "jitter_ratio")
# Metrics whose best value is 1.0, not the lowest (jitter_ratio: as smooth as the targets, neither shakier
# nor frozen; the amplitudes: as lively as the real person, neither damped nor exaggerated).
BEST_NEAR_ONE = frozenset({"jitter_ratio", "reenact_amplitude", "reenact_mouth_amplitude"})
NEAR_ONE_MEANING = {
    "reenact_amplitude": "the avatar's spread of the expression measures over the real frames', median; 0 = frozen",
    "reenact_mouth_amplitude": "the same for mouth opening",
}
# Metrics where higher is better (image similarity, correlations); every other metric is lower-is-better.
HIGHER_IS_BETTER = frozenset({"psnr", "ssim", "psnr_face", "ssim_face", "psnr_head", "ssim_head",
                               "transfer_r", "reenact_r", "reenact_mouth_r"})
PRODUCER = "`python -m avatar_lightning test` (or `fit`) of an animator experiment"


@dataclass
class Row:
    """One line of the comparison: a learned run or a baseline, with where its numbers came from."""

    kind: str  # "run" | "baseline"
    label: str
    backbone: str
    features: str
    residual: str
    split: str
    frames: int | None
    frames_scored: int | None
    metrics: dict[str, float | None]
    per_frame: dict[str, list[float]] = field(default_factory=dict)
    source: Path = Path()
    baseline: str = ""  # a baseline row's key in scores.json (scoring.BASELINES), "" otherwise


def find_scores(paths: Sequence[str | Path]) -> list[Path]:
    """Every ``scores.json`` the arguments name, in order, each once.

    A folder's own ``scores.json`` wins; without one, every ``scores.json`` beneath it is taken, so a grid
    folder collects all its runs. A missing path is an error (a typo should not silently drop a run).
    """
    found: list[Path] = []
    empty: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            hits = [path]
        elif path.is_dir():
            hits = [path / SCORES] if (path / SCORES).is_file() else sorted(path.rglob(SCORES))
        else:
            raise CacheError(f"{path} does not exist (expected a run folder or a {SCORES} file)")
        if not hits:
            empty.append(path)
        found.extend(hits)
    if not found:
        searched = ", ".join(str(p) for p in empty)
        raise CacheError(
            f"no {SCORES} found in {searched} (searched each folder and, recursively, beneath it); "
            f"scores are written by {PRODUCER}"
        )
    for path in empty:
        print(f"warning: no {SCORES} in or beneath {path}", file=sys.stderr)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def load_scores(path: Path) -> dict[str, Any]:
    """The parsed file; a clear error naming it when it is not the animator's scores."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CacheError(f"{path} is not a readable scores file ({err}); rewrite it with {PRODUCER}") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise CacheError(f"{path} has no \"metrics\" object; it is not a scores file written by {PRODUCER}")
    baselines = data.get("baselines", {})
    if not isinstance(baselines, dict) or not all(
        isinstance(b, dict) and isinstance(b.get("metrics"), dict) for b in baselines.values()
    ):
        raise CacheError(f"{path}: \"baselines\" must map names to objects with a \"metrics\" object")
    return data


def _number(value: Any, path: Path, where: str) -> float | None:
    """A finite float, or None for null / NaN / inf (all shown as n/a: nothing to compare)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CacheError(f"{path}: {where} is {value!r}, not a number or null")
    return float(value) if math.isfinite(value) else None


def _metrics(block: dict[str, Any], path: Path, where: str) -> dict[str, float | None]:
    return {name: _number(value, path, f"{where}.metrics.{name}") for name, value in block["metrics"].items()}


def _per_frame(block: dict[str, Any], path: Path, where: str) -> dict[str, list[float]]:
    """Per-frame curves with null (unscored frames) as NaN, so plots show them as gaps."""
    curves = block.get("per_frame") or {}
    if not isinstance(curves, dict):
        raise CacheError(f"{path}: {where}.per_frame must be an object of lists")
    out = {}
    for name, values in curves.items():
        if not isinstance(values, list):
            raise CacheError(f"{path}: {where}.per_frame.{name} must be a list")
        numbers = (_number(v, path, f"{where}.per_frame.{name}[{i}]") for i, v in enumerate(values))
        out[name] = [math.nan if v is None else v for v in numbers]
    return out


def _optional_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def rows_of(data: dict[str, Any], path: Path) -> tuple[Row, list[tuple[str, Row]]]:
    """The run's row and its baselines' rows (each keyed by its baseline name, for deduplication)."""
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    features = str(model.get("features", "?"))
    residual_dim = _optional_int(model.get("residual_dim"))
    split = str(data.get("split", "?"))
    frames, scored = _optional_int(data.get("frames")), _optional_int(data.get("frames_scored"))
    run = Row(
        kind="run",
        label=str(data.get("label") or data.get("run_dir") or path.parent.name),
        backbone=str(model.get("backbone", "?")),
        features=features,
        residual="?" if residual_dim is None else ("yes" if residual_dim > 0 else "no"),
        split=split,
        frames=frames,
        frames_scored=scored,
        metrics=_metrics(data, path, "run"),
        per_frame=_per_frame(data, path, "run"),
        source=path,
    )
    baselines = []
    for key, block in data.get("baselines", {}).items():
        label = str(block.get("label") or key)
        if f"({features})" not in label:
            label = f"{label} ({features})"
        baselines.append((key, Row(
            kind="baseline",
            label=f"baseline: {label}",
            backbone="-",
            features=features,
            residual="-",
            split=split,
            frames=_optional_int(block.get("frames")) or frames,
            frames_scored=_optional_int(block.get("frames_scored")) or scored,
            metrics=_metrics(block, path, f"baselines.{key}"),
            per_frame=_per_frame(block, path, f"baselines.{key}"),
            source=path,
            baseline=key,
        )))
    return run, baselines


def _sort_key(metric: str) -> Callable[[Row], tuple[bool, float, str]]:
    """Ascending by ``metric`` (distance from 1 for near-one metrics), rows without a value last."""

    def key(row: Row) -> tuple[bool, float, str]:
        value = row.metrics.get(metric)
        if value is not None and metric in BEST_NEAR_ONE:
            value = abs(value - 1.0)
        elif value is not None and metric in HIGHER_IS_BETTER:
            value = -value
        return (value is None, value if value is not None else 0.0, row.label)

    return key


def collect_rows(paths: Sequence[Path], first_metric: str) -> list[Row]:
    """Runs sorted by the first metric, then baselines, each (baseline, features) pair once."""
    runs: list[Row] = []
    baselines: dict[tuple[str, str], Row] = {}
    for path in paths:
        run, extra = rows_of(load_scores(path), path)
        runs.append(run)
        for key, row in extra:
            kept = baselines.setdefault((key, row.features), row)
            if kept is not row and kept.metrics != row.metrics:
                print(f"warning: baseline {key!r} ({row.features}) differs between {kept.source} and "
                      f"{row.source}; the table shows the first", file=sys.stderr)
    ordered = sorted(baselines.items(), key=lambda item: (item[0][1], item[0][0]))
    return sorted(runs, key=_sort_key(first_metric)) + [row for _, row in ordered]


def format_number(value: float | None) -> str:
    """4 significant digits, or n/a."""
    return "n/a" if value is None else f"{value:.4g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def best_values(rows: Sequence[Row], metrics: Sequence[str]) -> dict[str, float]:
    """The best value of each metric among all rows: the lowest, or the highest for :data:`HIGHER_IS_BETTER`
    (near-one metrics are never bolded)."""
    best = {}
    for metric in metrics:
        values = [r.metrics[metric] for r in rows if r.metrics.get(metric) is not None]
        if values and metric not in BEST_NEAR_ONE:
            best[metric] = max(values) if metric in HIGHER_IS_BETTER else min(values)
    return best


def _frames_line(rows: Sequence[Row]) -> str:
    """Which split and how many frames; says so when runs were scored on different data."""
    runs = [r for r in rows if r.kind == "run"]
    splits = sorted({r.split for r in runs})
    frames = sorted({r.frames for r in runs if r.frames is not None})
    scored = sorted({r.frames_scored for r in runs if r.frames_scored is not None})
    text = (f"Scored on split `{', '.join(splits)}`: {', '.join(map(str, frames)) or '?'} frames "
            f"({', '.join(map(str, scored)) or '?'} with valid features).")
    if len(splits) > 1 or len(frames) > 1:
        text += " Runs were scored on different data: compare with care."
    return text


def markdown_table(rows: Sequence[Row], metrics: Sequence[str]) -> str:
    header = ["run", "backbone", "features", "residual", "frames scored", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (1 + len(metrics))) + "|"]
    best = best_values(rows, metrics)
    for row in rows:
        cells = [row.label, row.backbone, row.features, row.residual,
                 "?" if row.frames_scored is None else str(row.frames_scored)]
        for metric in metrics:
            value = row.metrics.get(metric)
            text = format_number(value)
            cells.append(f"**{text}**" if value is not None and value == best.get(metric) else text)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    notes = ["", _frames_line(rows), ""]
    lower = [m for m in metrics if m not in BEST_NEAR_ONE and m not in HIGHER_IS_BETTER]
    if lower:
        notes.append(f"Lower is better for {', '.join(f'`{m}`' for m in lower)}; the best value is in bold.")
    if higher := [m for m in metrics if m in HIGHER_IS_BETTER]:
        notes.append(f"Higher is better for {', '.join(f'`{m}`' for m in higher)}; the best value is in bold.")
    for metric in metrics:
        if metric in BEST_NEAR_ONE:
            meaning = NEAR_ONE_MEANING.get(metric, "as smooth as the targets, neither shakier nor frozen")
            notes.append(f"`{metric}` is best near 1.0 ({meaning}); not bolded.")
    notes.append("n/a: not measured (e.g. `blend_mse` without a head VAE).")
    notes += ["", "Sources:", *(f"- `{s}`" for s in dict.fromkeys(str(r.source) for r in rows))]
    return "\n".join(lines + notes) + "\n"


def csv_text(rows: Sequence[Row]) -> str:
    """Every row with every metric any file has (empty cell for null)."""
    metrics = list(dict.fromkeys(m for row in rows for m in row.metrics))
    fields = ["kind", "label", "backbone", "features", "residual", "split", "frames", "frames_scored",
              *metrics, "source"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        record: dict[str, Any] = {
            "kind": row.kind, "label": row.label, "backbone": row.backbone, "features": row.features,
            "residual": row.residual, "split": row.split, "frames": row.frames, "frames_scored": row.frames_scored,
            "source": str(row.source),
        }
        record.update({m: repr(row.metrics[m]) if row.metrics.get(m) is not None else "" for m in metrics})
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return buffer.getvalue()
