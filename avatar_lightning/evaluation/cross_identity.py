"""Cross-identity scores: the avatar driven by synthetic identities whose true expression is known.

Each standard driver (:data:`STANDARD_DRIVERS`, one identity per performance style, together moving every blend
shape) is made once and reused; its features are extracted as the actor's were. A candidate's relative blend
error (``scoring.cross_identity_scores``: 0 perfect, 1 = any constant prediction) is given per driver and per
blend shape, as a table and a heat map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avatar_lightning.cache.files import atomic_write_text
from avatar_lightning.cache.layout import feature_array, latent_source, truth_array, valid_array
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError
from avatar_lightning.evaluation.candidates import Candidate, Scores, baselines, load_runs, run_cache
from avatar_lightning.evaluation.plots import pyplot, save_figure
from avatar_lightning.evaluation.tables import Row
from avatar_lightning.features.run import extract_features, options_from_record
from avatar_lightning.models.head_vae import load_head_vae
from avatar_lightning.scoring import baseline_label, blend_decoder, cross_identity_scores

# The cross-identity drivers: one identity per style, together moving every blend shape (see DRIVER_STYLES).
STANDARD_DRIVERS: tuple[tuple[int, str], ...] = (
    (1, "speaking"), (2, "emoting"), (3, "fast"), (4, "subtle"), (5, "asymmetric"))


def make_synthetic_drivers(preset: str, work: Path, seed: int = 0) -> list[Path]:
    """The standard cross-identity drivers at ``preset``, made once in ``work/<preset>`` and reused (with the
    features extracted into them) by later calls."""
    from avatar_lightning.synth.generate import generate

    folders = []
    for identity, style in STANDARD_DRIVERS:
        folder = work / preset / f"identity{identity}_{style}"
        generate(folder, preset=preset, identity=identity, seed=seed, style=style, previews=True)
        folders.append(folder)
    return folders


def driver_features(driver: CaptureCache, actor: CaptureCache, output: str) -> tuple[np.ndarray, np.ndarray]:
    """``features/<output>`` of a driver, extracted as the actor's were (same extractor and ``relative``)."""
    recorded = actor.manifest.meta.get("features", {}).get(output)
    if recorded is None:
        raise CacheError(f"{actor.root}: no record of how features/{output} were made, so a driver's cannot be made "
                         "the same way")
    relative = recorded.get("relative", "none")
    made = driver.manifest.meta.get("features", {}).get(output, {})
    if not driver.has(feature_array(output)) or made.get("relative", "none") != relative:
        extract_features(str(driver.root), recorded["extractor"], options=options_from_record(recorded),
                         relative=relative, progress=False)
        driver = CaptureCache(driver.root)
    return (np.asarray(driver.require_finite(feature_array(output)), np.float32),
            np.asarray(driver.array(valid_array(output)), bool))


def require_truth(driver: CaptureCache) -> None:
    """A cross-identity driver must know its true expression: a synthetic one."""
    if not driver.has(truth_array("blend_weights")):
        raise CacheError(f"{driver.root} has no truth/blend_weights: a cross-identity driver is a synthetic one "
                         "(`python -m avatar_lightning synth --identity K --style S`)")


def score_cross_identity(candidate: Candidate, drivers: Sequence[CaptureCache], actor: CaptureCache,
                         decode: Callable[[np.ndarray], np.ndarray], names: Sequence[str] = ()) -> dict[str, Any]:
    """``{driver name: scoring.cross_identity_scores}`` of one candidate driven by each synthetic driver."""
    out = {}
    for driver in drivers:
        require_truth(driver)
        truth = np.asarray(driver.read(truth_array("blend_weights")), np.float32)
        if candidate.features == "-":  # predict-the-mean reads no features: every frame counts
            x, valid = np.zeros((len(truth), 1), np.float32), np.ones(len(truth), bool)
        else:
            x, valid = driver_features(driver, actor, candidate.features)
        predicted = decode(candidate.predict(x))
        shared = truth.shape[1]
        if predicted.shape[1] < shared:
            raise CacheError(f"{driver.root}: its truth has {shared} blend shapes, the avatar {predicted.shape[1]}; "
                             "a cross-identity driver must share the avatar's rig")
        # A real actor's rig has its own shapes after the shared ones (capture.personal_shapes). The driver's truth
        # knows the shared ones only, so they are what is scored; FaceMesh's transfer score sees the rest.
        out[driver.root.name] = cross_identity_scores(predicted[:, :shared], truth, valid,
                                                      list(names)[:shared] or None)
    return out


def add_cross_identity(rows: Sequence[Row], drivers: Sequence[str], cache: str | None, out: Path) -> list[Path]:
    """Cross-identity scores (:func:`score_cross_identity`) of every run row and its baselines, added
    to the rows as ``xid_relative_error``; writes cross_identity.md and its per-shape heat map."""
    run_rows = [r for r in rows if r.kind == "run"]
    caches = {str(cache) if cache else run_cache(r.source.parent) for r in run_rows}
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
    shapes = list(driver_caches[0].manifest.meta.get("blend_shapes") or actor.manifest.meta.get("blend_shapes") or [])
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
            label = f"baseline: {baseline_label(row.baseline, row.features)}"  # as candidates.baselines names it
            row.metrics["xid_relative_error"] = by_label.get(label)
    out.mkdir(parents=True, exist_ok=True)
    names = [d.root.name for d in driver_caches]
    atomic_write_text(out / "cross_identity.md", cross_identity_markdown(scored, names, shapes))
    written = [out / "cross_identity.md"]
    if cross_identity_heat_map(scored, shapes, out / "cross_identity_shapes.png"):
        written.append(out / "cross_identity_shapes.png")
    return written


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

    scored = [s for s in scores if s.cross_identity]
    if not scored:
        return False
    plt = pyplot()
    grid = np.stack([_per_shape(s) for s in scored])
    figure, axes = plt.subplots(figsize=(1.0 + 0.45 * grid.shape[1], 1.2 + 0.4 * len(scored)))
    image = axes.imshow(np.minimum(grid, 2.0), cmap="viridis_r", vmin=0, vmax=2.0, aspect="auto")
    axes.set_xticks(range(grid.shape[1]), shapes, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(len(scored)), [s.candidate.label for s in scored], fontsize=8)
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            axes.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6, color="w" if value > 1 else "k")
    figure.colorbar(image, label="relative error (1 = predicting the mean; clipped at 2)")
    save_figure(figure, path)
    return True
