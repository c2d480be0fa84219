"""What the evaluation scores: every trained animator cell, the baselines beside them, and the reference; and the
held-out frames they are scored on.

A :class:`Candidate` maps raw features ``(L, D)`` of one sequence to latents ``(L, Z)``: a learned cell (its
checkpoint), predict-the-training-mean, nearest neighbour in feature space, or the reference (the head VAE's own
encoding of each frame: the best any animator can reach with these networks).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatar_lightning.cache.layout import BLEND_WEIGHTS, feature_array, latent_array, valid_array
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.checkpoints import load_model
from avatar_lightning.errors import CacheError
from avatar_lightning.scoring import baseline_label, mean_baseline, nearest_neighbour_baseline

MEAN_LABEL = f"baseline: {baseline_label('mean')}"
REFERENCE_LABEL = "reference: the head VAE's encoding of each frame"


@dataclass
class Candidate:
    """A learned cell or a baseline: raw features ``(L, D)`` of one sequence -> latents ``(L, Z)``."""

    label: str
    kind: str  # "run" | "baseline" | "reference"
    features: str  # the feature output it reads ("-": none)
    predict: Callable[[np.ndarray], np.ndarray] | None  # None: the reference (the targets themselves)
    run_dir: Path | None = None
    backbone: str = "-"
    residual: str = "-"


@dataclass
class HeldOut:
    """One split's sequences of one feature variant: features, targets, validity, tracked blend, frame rows."""

    x: list[np.ndarray]
    z: list[np.ndarray]
    valid: list[np.ndarray]
    blend: list[np.ndarray] | None
    rows: list[np.ndarray]


@dataclass
class Scores:
    """Everything measured for one candidate."""

    candidate: Candidate
    metrics: dict[str, float | None] = field(default_factory=dict)
    per_frame: dict[str, list[float | None]] = field(default_factory=dict)
    cross_identity: dict[str, dict[str, Any]] = field(default_factory=dict)  # driver name -> scores


def _label(run_dir: Path, model: Any) -> str:
    """The label its ``scores.json`` holds (what `compare` shows), else the model's own."""
    scores = run_dir / "scores.json"
    if scores.is_file():
        try:
            return str(json.loads(scores.read_text())["label"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return str(model.label)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders (each holding ``checkpoints/last.ckpt``) named by ``paths`` or found beneath them."""
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise CacheError(f"{path} does not exist (expected an animator run folder or a folder of runs)")
        if (path / "checkpoints" / "last.ckpt").is_file():
            runs.append(path)
        else:
            runs += sorted(p.parent.parent for p in path.rglob("checkpoints/last.ckpt"))
    if not runs:
        raise CacheError(f"no animator run (checkpoints/last.ckpt) in or beneath {', '.join(map(str, paths))}; "
                         "runs are written by `python -m avatar_lightning fit` of an animator experiment")
    return list(dict.fromkeys(r.resolve() for r in runs))


def load_runs(run_dirs: Sequence[Path]) -> list[Candidate]:
    from avatar_lightning.models.animator import Animator

    candidates = []
    for run_dir in run_dirs:
        model = load_model(Animator, run_dir / "checkpoints" / "last.ckpt")

        def predict(x: np.ndarray, model: Any = model) -> np.ndarray:
            return model.predict_sequence(torch.from_numpy(np.array(x, np.float32))).numpy()

        h = model.hparams
        candidates.append(Candidate(_label(run_dir, model), "run", str(h.features), predict, run_dir,
                                    str(h.backbone), "yes" if h.residual_dim > 0 else "no"))
    return candidates


def baselines(cache: CaptureCache, features: Sequence[str], latents: str) -> list[Candidate]:
    """Predict-the-mean (features-free) and nearest neighbour in each feature variant (normalised by the
    training split's statistics, as the animators normalise)."""
    from datamodules.animator import AnimatorDataModule

    out: list[Candidate] = []
    for name in features:
        data = AnimatorDataModule(str(cache.root), features=name, latents=latents)
        train_x, train_z = data.training_frames()
        if not out:
            mean = mean_baseline(train_z, [1])[0][0]
            out.append(Candidate(MEAN_LABEL, "baseline", "-",
                                 lambda x, mean=mean: np.broadcast_to(mean, (len(x), len(mean))).copy()))
        stats = data.statistics()
        scale = (stats["feature_mean"], stats["feature_std"])
        bank = (train_x - scale[0]) / scale[1]

        def nearest(x: np.ndarray, bank: np.ndarray = bank, train_z: np.ndarray = train_z,
                    scale: tuple[np.ndarray, np.ndarray] = scale) -> np.ndarray:
            return nearest_neighbour_baseline(bank, train_z, [(x - scale[0]) / scale[1]])[0]

        out.append(Candidate(f"baseline: {baseline_label('nearest_neighbour', name)}", "baseline", name, nearest))
    return out


def held_out(cache: CaptureCache, features: str, latents: str, split: str) -> HeldOut:
    """The ``split``'s sequences of one feature variant (frames without a face are marked, not dropped)."""
    sequences = cache.sequences_in(split)
    if not sequences:
        raise CacheError(f"{cache.root}: no {split!r} sequence to score on")
    x_all, valid_all = cache.require_finite(feature_array(features)), cache.array(valid_array(features))
    z_all = cache.array(latent_array(latents))
    blend_all = cache.array(BLEND_WEIGHTS) if cache.has(BLEND_WEIGHTS) else None
    rows = [np.arange(s.first, s.last + 1) for s in sequences]
    return HeldOut(
        x=[np.asarray(x_all[r], np.float32) for r in rows],
        z=[np.asarray(z_all[r], np.float32) for r in rows],
        valid=[np.asarray(valid_all[r], bool) for r in rows],
        blend=None if blend_all is None else [np.asarray(blend_all[r], np.float32) for r in rows],
        rows=rows,
    )


def predictions(candidate: Candidate, data: HeldOut) -> list[np.ndarray]:
    if candidate.predict is None:
        return [z.copy() for z in data.z]
    return [candidate.predict(x) for x in data.x]


def run_cache(run_dir: Path) -> str:
    """The cache a run trained on, from the ``config.yaml`` LightningCLI saved beside it."""
    import yaml

    config = run_dir / "config.yaml"
    try:
        return str(yaml.safe_load(config.read_text())["data"]["init_args"]["cache_dir"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise CacheError(f"{run_dir}: cannot tell which cache it trained on (no readable config.yaml); "
                         "pass --cache") from None
