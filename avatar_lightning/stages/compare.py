"""``python -m avatar_lightning compare RUN...``: one table and plots of animator runs beside their baselines.

Reads the ``scores.json`` every animator test writes (a run folder, a grid folder searched recursively, or the
file itself) and writes into ``--out``: ``scores.md`` (the table, best values in bold), ``scores.csv`` (every
metric, machine-readable), one bar chart per metric and one per-frame plot per metric with per-frame data.
Baselines depend only on the features, so each (baseline, features) pair appears once however many runs share it.
Every file is written under a temporary name and renamed, so a crash never leaves a table that looks complete.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatar_lightning.errors import CacheError

SCORES = "scores.json"
DEFAULT_METRICS = ("latent_mse", "blend_mse", "jitter_ratio")
# Metrics whose best value is 1.0, not the lowest (jitter_ratio: as smooth as the targets, neither shakier
# nor frozen); every other metric is lower-is-better.
BEST_NEAR_ONE = frozenset({"jitter_ratio"})
# Metrics where higher is better (image similarity, transfer correlation); every other metric is lower-is-better.
HIGHER_IS_BETTER = frozenset({"psnr", "ssim", "psnr_face", "ssim_face", "transfer_r"})
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


# --------------------------------------------------------------------------------------------- discovery


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


# --------------------------------------------------------------------------------------------- loading


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


# --------------------------------------------------------------------------------------------- table


def _fmt(value: float | None) -> str:
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
            text = _fmt(value)
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
            notes.append(f"`{metric}` is best near 1.0 (as smooth as the targets, neither shakier nor frozen); "
                         "not bolded.")
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


# --------------------------------------------------------------------------------------------- writing


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary name beside ``path``, then rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text))


def _save_figure(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(figure)


def _pyplot() -> Any:
    """pyplot on the file-only backend, imported late so ``--help`` stays fast and no display is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(rows: Sequence[Row], metric: str, path: Path) -> bool:
    """One horizontal bar per row with a value (baselines grey); False when no row has one."""
    shown = [r for r in rows if r.metrics.get(metric) is not None]
    if not shown:
        return False
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, max(2.0, 0.4 * len(shown) + 1.0)))
    values = [r.metrics[metric] for r in shown]
    colors = ["0.65" if r.kind == "baseline" else "C0" for r in shown]
    bars = axes.barh(range(len(shown)), values, color=colors)
    axes.set_yticks(range(len(shown)), [r.label for r in shown])
    axes.invert_yaxis()  # table order, top to bottom
    axes.bar_label(bars, labels=[_fmt(v) for v in values], padding=3, fontsize=8)
    axes.margins(x=0.15)
    if metric in BEST_NEAR_ONE:
        axes.axvline(1.0, color="k", linestyle=":", linewidth=1)
        axes.set_xlabel(f"{metric} (best near 1.0)")
    else:
        axes.set_xlabel(f"{metric} ({'higher' if metric in HIGHER_IS_BETTER else 'lower'} is better)")
    _save_figure(figure, path)
    return True


def _spans_decades(curves: Sequence[Sequence[float]], decades: float = 2.0) -> bool:
    positive = [v for curve in curves for v in curve if math.isfinite(v) and v > 0]
    return bool(positive) and max(positive) / min(positive) > 10**decades


def per_frame_plot(rows: Sequence[Row], metric: str, path: Path) -> bool:
    """One line per row along the held-out frames (baselines dashed); False when no row has per-frame data."""
    shown = [r for r in rows if r.per_frame.get(metric)]
    if not shown:
        return False
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(10, 4.5))
    for row in shown:
        style = {"linestyle": "--", "linewidth": 1.0} if row.kind == "baseline" else {"linewidth": 1.2}
        axes.plot(range(len(row.per_frame[metric])), row.per_frame[metric], label=row.label, **style)
    if _spans_decades([r.per_frame[metric] for r in shown]):
        axes.set_yscale("log")
    axes.set_xlabel("held-out frame")
    axes.set_ylabel(metric)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save_figure(figure, path)
    return True


def write_outputs(rows: Sequence[Row], metrics: Sequence[str], out: Path) -> tuple[str, list[Path]]:
    """Write table, CSV and plots into ``out``; returns the table and the files written."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, metrics)
    written = [out / "scores.md", out / "scores.csv"]
    _write_text(written[0], table)
    _write_text(written[1], csv_text(rows))
    for metric in metrics:
        if bar_chart(rows, metric, out / f"{metric}.png"):
            written.append(out / f"{metric}.png")
        else:
            print(f"warning: no run has a value for {metric}; no bar chart", file=sys.stderr)
    for metric in metrics:
        if per_frame_plot(rows, metric, out / f"per_frame_{metric}.png"):
            written.append(out / f"per_frame_{metric}.png")
    return table, written


def _run_cache(run_dir: Path) -> str:
    """The cache a run trained on, from the ``config.yaml`` LightningCLI saved beside it."""
    import yaml

    config = run_dir / "config.yaml"
    try:
        return str(yaml.safe_load(config.read_text())["data"]["init_args"]["cache_dir"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise CacheError(f"{run_dir}: cannot tell which cache it trained on (no readable config.yaml); "
                         "pass --cache") from None


def transfer_results(runs: Sequence[Path], drivers: Sequence[str | Path], cache: str | None,
                     work: Path) -> list[Any]:
    """Every run's transfer on ``drivers`` (:func:`transfer_grid.score_grid`), grouped by the cache each trained on."""
    from avatar_lightning.cache.store import CaptureCache
    from avatar_lightning.transfer_grid import score_grid

    by_cache: dict[str, list[Path]] = {}
    for run in runs:
        by_cache.setdefault(str(cache) if cache else _run_cache(run), []).append(run)
    results = []
    for cache_dir, group in by_cache.items():
        results += score_grid(group, CaptureCache(cache_dir), drivers, work)
    return results


def write_transfer_outputs(results: Sequence[Any], drivers: Sequence[str | Path], out: Path) -> list[Path]:
    """transfer_grid.md, .json and .png of :func:`transfer_results`."""
    from avatar_lightning.transfer_grid import markdown, to_json

    table = markdown(results)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "transfer_grid.md", out / "transfer_grid.json", out / "transfer_grid.png"]
    _write_text(written[0], table)
    _write_text(written[1], json.dumps(to_json(results), indent=1))
    plt = _pyplot()
    ordered = sorted(results, key=lambda r: -r.metrics()["transfer_r"])
    figure, axes = plt.subplots(figsize=(8, max(2.0, 0.4 * len(ordered) + 1.0)))
    values = [r.metrics()["transfer_r"] for r in ordered]
    bars = axes.barh(range(len(ordered)), values, color="C0")
    axes.set_yticks(range(len(ordered)), [r.label for r in ordered])
    axes.invert_yaxis()
    axes.bar_label(bars, labels=[_fmt(v) for v in values], padding=3, fontsize=8)
    axes.axvline(0.8, color="k", linestyle=":", linewidth=1)
    axes.set_xlabel(f"transfer: mean Pearson over {len(drivers)} real driver(s) (higher is better; goal 0.8)")
    axes.margins(x=0.15)
    _save_figure(figure, written[2])
    return written


def write_transfer(score_files: Sequence[Path], drivers: Sequence[str], out: Path, cache: str | None,
                   work: Path) -> list[Path]:
    """Score every run's transfer on ``drivers`` (:mod:`transfer_grid`); writes transfer_grid.md, .json and .png."""
    from avatar_lightning.transfer_grid import markdown

    results = transfer_results([path.parent for path in score_files], drivers, cache, work)
    print(markdown(results))
    return write_transfer_outputs(results, drivers, out)


def add_cross_identity(rows: Sequence[Row], drivers: Sequence[str], cache: str | None, out: Path) -> list[Path]:
    """Cross-identity scores (:func:`evaluation.score_cross_identity`) of every run row and its baselines, added
    to the rows as ``xid_relative_error``; writes cross_identity.md and its per-shape heat map."""
    from avatar_lightning.cache.layout import latent_source
    from avatar_lightning.cache.store import CaptureCache
    from avatar_lightning.evaluation import (
        MEAN_LABEL,
        Scores,
        baselines,
        load_runs,
        score_cross_identity,
    )
    from avatar_lightning.models.head_vae import load_head_vae
    from avatar_lightning.scoring import blend_decoder
    from avatar_lightning.stages.evaluate import cross_identity_heat_map, cross_identity_markdown

    run_rows = [r for r in rows if r.kind == "run"]
    caches = {str(cache) if cache else _run_cache(r.source.parent) for r in run_rows}
    if len(caches) != 1:
        raise CacheError(f"--synthetic-drivers: the runs trained on {len(caches)} caches ({sorted(caches)}); compare "
                         "runs of one actor, or pass --cache")
    actor = CaptureCache(caches.pop())
    source = latent_source(actor, "head_vae")
    if source is None:
        raise CacheError(f"{actor.root}: no head VAE recorded for latents/head_vae; run `python -m avatar_lightning "
                         "encode` with the head VAE the animators were trained against")
    decode = blend_decoder(load_head_vae(source))
    runs = load_runs([r.source.parent for r in run_rows])
    candidates = [*runs, *baselines(actor, list(dict.fromkeys(c.features for c in runs)), "head_vae")]
    driver_caches = [CaptureCache(d) for d in drivers]
    shapes = list(actor.manifest.meta.get("blend_shapes") or driver_caches[0].manifest.meta.get("blend_shapes") or [])
    scored = [Scores(c, cross_identity=score_cross_identity(c, driver_caches, actor, decode, shapes))
              for c in candidates]
    by_label = {}
    for s in scored:
        values = [v["metrics"]["relative_error"] for v in s.cross_identity.values()]
        values = [v for v in values if v is not None]
        s.metrics["xid_relative_error"] = sum(values) / len(values) if values else None
        by_label[s.candidate.label] = s.metrics["xid_relative_error"]
    for row, score in zip(run_rows, scored[: len(runs)], strict=True):  # labels may repeat; order does not
        row.metrics["xid_relative_error"] = score.metrics["xid_relative_error"]
    for row in rows:
        if row.kind == "baseline":
            label = MEAN_LABEL if "training mean" in row.label else f"baseline: nearest neighbour ({row.features})"
            row.metrics["xid_relative_error"] = by_label.get(label)
    out.mkdir(parents=True, exist_ok=True)
    names = [d.root.name for d in driver_caches]
    _write_text(out / "cross_identity.md", cross_identity_markdown(scored, names, shapes))
    written = [out / "cross_identity.md"]
    if cross_identity_heat_map(scored, shapes, out / "cross_identity_shapes.png"):
        written.append(out / "cross_identity_shapes.png")
    return written


# --------------------------------------------------------------------------------------------- command line


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning compare",
        description="Compare animator runs and their baselines: a markdown table, a CSV and plots.",
    )
    parser.add_argument("runs", nargs="+", help=f"run folders (searched recursively for {SCORES}) or {SCORES} files")
    parser.add_argument("--out", required=True, type=Path, help="folder for scores.md, scores.csv and the plots")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                        help="comma-separated metrics for the table and plots (default: %(default)s)")
    parser.add_argument("--drivers", nargs="+", metavar="VIDEO",
                        help="real driving videos: also score every run's transfer on them (transfer_grid.md, .json, "
                             ".png; FaceMesh on the driver vs the run's decoded mesh)")
    parser.add_argument("--synthetic-drivers", nargs="+", metavar="CACHE",
                        help="synthetic driver caches (`synth --identity K --style S`): also score every run and "
                             "baseline driven by these identities of known expression (cross_identity.md, a "
                             "per-shape heat map, column xid_relative_error)")
    parser.add_argument("--cache", help="with --drivers / --synthetic-drivers: the actor's cache the runs trained on "
                                        "(default: from each run's config.yaml)")
    parser.add_argument("--work", type=Path, help="with --drivers: where driving caches are kept (default "
                                                  "<out>/drivers)")
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        parser.error("--metrics names no metric")
    rows = collect_rows(find_scores(args.runs), metrics[0])
    known = {m for row in rows for m in row.metrics}
    if unknown := [m for m in metrics if m not in known]:
        parser.error(f"unknown metric(s) {', '.join(unknown)}; the scores have {', '.join(sorted(known))}")
    if args.synthetic_drivers:
        written_cross = add_cross_identity(rows, args.synthetic_drivers, args.cache, args.out)
        metrics.append("xid_relative_error")
    table, written = write_outputs(rows, metrics, args.out)
    if args.synthetic_drivers:
        written += written_cross
    if args.drivers:
        written += write_transfer(find_scores(args.runs), args.drivers, args.out, args.cache,
                                  args.work or args.out / "drivers")
    print(table)
    print("wrote:")
    for path in written:
        print(f"  {path}")
    return 0
