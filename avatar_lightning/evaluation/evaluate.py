"""The paper's comparison, made quantitative: every animator cell and the baselines scored by one code path.

Each candidate (a trained cell, or a baseline: predict the training mean, nearest neighbour in feature space) is
scored on the actor's cache:

- **validation**: latent MSE. It is the only number a cell is chosen by (:func:`choose`); the test sequence is
  held out from every decision, so its scores stay an honest estimate.
- **test**: latent MSE, blend MSE, jitter ratio (:func:`scoring.score_sequences`), and images of the full chain
  against the captured frames (:mod:`.images`). A reference row renders the head VAE's own encoding of each frame:
  the best any animator can reach with these networks.
- **synthetic drivers**: other identities whose true expression is known drive the avatar (:mod:`.cross_identity`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError
from avatar_lightning.evaluation.candidates import (
    MEAN_LABEL,
    REFERENCE_LABEL,
    Candidate,
    Scores,
    baselines,
    held_out,
    load_runs,
    predictions,
)
from avatar_lightning.evaluation.cross_identity import score_cross_identity
from avatar_lightning.evaluation.images import ImageScorer, image_rows
from avatar_lightning.scoring import blend_decoder, score_sequences

SELECTION_RULE = ("the cell with the lowest latent MSE on the validation sequence(s); the test sequence is not "
                  "used for choosing")



@dataclass
class Evaluation:
    """The scores of every candidate, the chosen cell and what was measured on what."""

    scores: list[Scores]
    chosen: Scores
    notes: list[str]
    drivers: list[str]
    blend_shapes: list[str]
    image_frames: int
    cameras: list[str]
    ladder: Any = None  # reenactment.Ladder of the chosen cell, where it was measured

    def to_json(self) -> dict[str, Any]:
        return {
            "ladder": None if self.ladder is None else self.ladder.to_json(),
            "chosen": {"label": self.chosen.candidate.label, "run_dir": str(self.chosen.candidate.run_dir),
                       "rule": SELECTION_RULE},
            "notes": self.notes, "drivers": self.drivers, "blend_shapes": self.blend_shapes,
            "image_frames": self.image_frames, "cameras": self.cameras,
            "candidates": [{"label": s.candidate.label, "kind": s.candidate.kind, "features": s.candidate.features,
                            "backbone": s.candidate.backbone, "residual": s.candidate.residual,
                            "run_dir": None if s.candidate.run_dir is None else str(s.candidate.run_dir),
                            "metrics": {k: _json_number(v) for k, v in s.metrics.items()},
                            "per_frame": s.per_frame, "cross_identity": s.cross_identity}
                           for s in self.scores],
        }


COLLAPSED_LATENTS = 0.8  # the reference's blend error above this share of the mean baseline's: latents say little


def _head_vae_check(scores: Sequence[Scores]) -> list[str]:
    """A warning when the head VAE's own encoding of each frame decodes to blend weights barely better than the
    training mean: its latents then carry little expression, and no animator can do better than that."""
    by_label = {s.candidate.label: s.metrics.get("blend_mse") for s in scores}
    reference, mean = by_label.get(REFERENCE_LABEL), by_label.get(MEAN_LABEL)
    if reference is None or mean is None or reference <= COLLAPSED_LATENTS * mean:
        return []
    return [f"the head VAE's latents carry little expression: its own encoding of the test frames decodes to a "
            f"blend MSE of {reference:.3g}, against {mean:.3g} for the training mean, so every cell is bounded by "
            "that; train the head VAE longer (or check its KL weight) before comparing animators"]


def _json_number(value: float | None) -> float | None:
    """Strict JSON has no Infinity (a PSNR of identical frames): null, which the tables show as n/a."""
    return None if value is None or not np.isfinite(value) else float(value)


def choose(scores: Sequence[Scores]) -> Scores:
    """The learned cell chosen by :data:`SELECTION_RULE` (ties: the label, for a stable choice)."""
    runs = [s for s in scores if s.candidate.kind == "run" and s.metrics.get("val_latent_mse") is not None]
    if not runs:
        raise CacheError("no run has a validation score to choose by")
    return min(runs, key=lambda s: (s.metrics["val_latent_mse"], s.candidate.label))


def evaluate(run_dirs: Sequence[Path], cache: CaptureCache, head_vae: Any, rerenderer: Any | None = None,
             latents: str = "head_vae", cameras: Sequence[str] | None = None, image_frames: int = 50,
             drivers: Sequence[Path] = (), lpips: Any = None, log: Callable[[str], None] = print,
             embedder: Any = None) -> Evaluation:
    """Score every run in ``run_dirs`` and the baselines on ``cache`` (see the module docstring).

    ``rerenderer`` None: no image metrics (said in the notes). ``drivers``: synthetic driver caches (with
    ``truth/blend_weights``) for the cross-identity scores.
    """
    runs = load_runs(run_dirs)
    variants = list(dict.fromkeys(c.features for c in runs))
    candidates = [*runs, *baselines(cache, variants, latents),
                  Candidate(REFERENCE_LABEL, "reference", "-", None)]
    notes: list[str] = []
    decode = blend_decoder(head_vae)
    data = {(f, split): held_out(cache, f if f != "-" else variants[0], latents, split)
            for f in [*variants, "-"] for split in ("val", "test")}
    test_any = data[("-", "test")]
    rows = image_rows(test_any, image_frames)
    scorer = None
    if rerenderer is None:
        notes.append("no image metrics: pass --rerender (the re-render U-Net checkpoint) to render the full chain")
    else:
        scorer = ImageScorer(cache, head_vae, rerenderer, np.concatenate(test_any.rows)[rows], cameras, lpips,
                             embedder=embedder)
        if embedder is None:
            notes.append("no identity distance: dlib or its model files are missing (`python3.11 tasks.py setup` "
                         "installs both)")
        elif scorer.identity_floor is not None:
            notes.append(f"identity: the real test frames lie {scorer.identity_floor:.2f} from each other in dlib's "
                         "embedding (a perfect avatar's distance would be near that; the same person is below 0.6)")
        if lpips is None:
            notes.append("no LPIPS: its AlexNet backbone file is missing; place it as the README's head-model section "
                         "says, or pass --lpips-backbone FILE")
    driver_caches = [CaptureCache(d) for d in drivers]
    names = list(cache.manifest.meta.get("blend_shapes") or [])
    if driver_caches:  # the drivers' truth names the shared shapes they are scored on (a real actor adds its own)
        names = list(driver_caches[0].manifest.meta.get("blend_shapes") or names)
    scored: list[Scores] = []
    for candidate in candidates:
        log(f"scoring {candidate.label}")
        result = Scores(candidate)
        val = data[(candidate.features, "val")]
        result.metrics["val_latent_mse"] = score_sequences(predictions(candidate, val), val.z,
                                                           val.valid)["metrics"]["latent_mse"]
        test = data[(candidate.features, "test")]
        predicted = predictions(candidate, test)
        blend_true = test.blend
        latent = score_sequences(predicted, test.z, test.valid,
                                 [decode(p) for p in predicted] if blend_true is not None else None, blend_true)
        result.metrics.update(latent["metrics"])
        result.per_frame.update(latent["per_frame"])
        if scorer is not None:
            result.metrics.update(scorer.score(np.concatenate(predicted)[rows]))
        if candidate.kind != "reference":
            result.cross_identity = score_cross_identity(candidate, driver_caches, cache, decode, names)
        if result.cross_identity:
            relative = [s["metrics"]["relative_error"] for s in result.cross_identity.values()]
            relative = [r for r in relative if r is not None]  # None: a driver that moves no shape
            result.metrics["xid_relative_error"] = float(np.mean(relative)) if relative else None
        scored.append(result)
    notes += _head_vae_check(scored)
    return Evaluation(scored, choose(scored), notes, [d.root.name for d in driver_caches], names, len(rows),
                      list(scorer.renderers) if scorer else [])
