"""Scores of predicted latent sequences against targets, and the baselines every learned animator must beat.

One code path scores learned animators and baselines alike (:func:`score_sequences`), so a table that puts
them side by side compares like with like. All metrics are lower-is-better except ``jitter_ratio`` (best near
1: as smooth as the targets, neither shakier nor frozen).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

# The baselines every learned animator must beat, by the key ``scores.json`` files them under.
BASELINES = {"mean": "predict the training mean", "nearest_neighbour": "nearest neighbour"}


def baseline_label(key: str, features: str | None = None) -> str:
    """A baseline's name in ``scores.json`` and tables: what it does, and the features it reads (the mean reads
    none, so its label never names them)."""
    text = BASELINES[key]
    return text if key == "mean" or features is None else f"{text} ({features})"


def second_difference_magnitude(sequence: np.ndarray) -> float:
    """Mean ``|y[t+1] - 2 y[t] + y[t-1]|`` over frames and channels: temporal jitter of one ``(L, C)`` sequence."""
    if len(sequence) < 3:
        return float("nan")
    return float(np.abs(sequence[2:] - 2 * sequence[1:-1] + sequence[:-2]).mean())


def _jitter(sequences: Sequence[np.ndarray]) -> float:
    """Frame-weighted mean jitter over several sequences (second differences never straddle two)."""
    values = [(second_difference_magnitude(s), len(s) - 2) for s in sequences if len(s) >= 3]
    if not values:
        return float("nan")
    return float(sum(v * n for v, n in values) / sum(n for _, n in values))


def _masked_mean(values: np.ndarray, valid: np.ndarray) -> float:
    return float(values[valid].mean()) if valid.any() else float("nan")


def score_sequences(
    predictions: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    valid: Sequence[np.ndarray],
    blend_predicted: Sequence[np.ndarray] | None = None,
    blend_true: Sequence[np.ndarray] | None = None,
) -> dict[str, object]:
    """Scores of ``predictions`` against ``targets`` (lists of ``(L_i, Z)``, one per held-out sequence).

    ``valid`` ``(L_i,)`` bool marks the frames scored (frames whose features were found). ``blend_*`` are the
    blend weights decoded from the predictions by the head VAE and the capture's tracked ones ``(L_i, K)``.

    Returns ``{"metrics": {...}, "per_frame": {...}}``: per-frame lists run over the sequences in order, with
    ``None`` where a frame is not scored.
    """
    pred, true, ok = (np.concatenate(list(a)) for a in (predictions, targets, valid))
    ok = ok.astype(bool)
    latent = ((pred - true) ** 2).mean(axis=1)
    jitter, jitter_target = _jitter(predictions), _jitter(targets)
    metrics: dict[str, float | None] = {
        "latent_mse": _masked_mean(latent, ok),
        "blend_mse": None,
        "jitter": jitter,
        "jitter_target": jitter_target,
        "jitter_ratio": jitter / jitter_target if jitter_target > 1e-12 else float("nan"),
    }
    per_frame: dict[str, list[float | None]] = {"latent_mse": _per_frame(latent, ok)}
    if blend_predicted is not None and blend_true is not None:
        blend = ((np.concatenate(list(blend_predicted)) - np.concatenate(list(blend_true))) ** 2).mean(axis=1)
        metrics["blend_mse"] = _masked_mean(blend, ok)
        per_frame["blend_mse"] = _per_frame(blend, ok)
    return {"metrics": {k: _finite_or_none(v) for k, v in metrics.items()}, "per_frame": per_frame,
            "frames": int(len(ok)), "frames_scored": int(ok.sum())}


def _per_frame(values: np.ndarray, valid: np.ndarray) -> list[float | None]:
    return [float(v) if keep else None for v, keep in zip(values, valid, strict=True)]


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def blend_decoder(head_vae: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """``z (L, Z) -> blend weights (L, K)`` through the head VAE's decoder, without gradients (for scoring)."""

    @torch.no_grad()
    def decode(z: np.ndarray) -> np.ndarray:
        return head_vae.decode_blend_weights(torch.from_numpy(np.array(z, np.float32))).numpy()

    return decode


def mean_baseline(train_latents: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
    """Predict-the-mean: every frame of every held-out sequence gets the training latents' mean."""
    mean = train_latents.mean(axis=0, dtype=np.float64).astype(np.float32)
    return [np.broadcast_to(mean, (n, mean.shape[0])).copy() for n in lengths]


@torch.no_grad()
def nearest_neighbour_baseline(
    train_features: np.ndarray, train_latents: np.ndarray, features: Sequence[np.ndarray], chunk: int = 1024
) -> list[np.ndarray]:
    """Each frame takes the latent of the training frame nearest in (already normalised) feature space.

    Distances are computed chunk by chunk as ``|a|^2 - 2 a.b + |b|^2`` on torch, so a 3-minute capture against a
    30 s test sequence stays a few matrix products and never a ``(N_test, N_train, D)`` tensor.
    """
    bank = torch.from_numpy(np.ascontiguousarray(train_features, dtype=np.float32))
    bank_sq = (bank**2).sum(dim=1)
    out = []
    for sequence in features:
        query_all = torch.from_numpy(np.ascontiguousarray(sequence, dtype=np.float32))
        nearest = []
        for start in range(0, len(query_all), chunk):
            query = query_all[start : start + chunk]
            distance = bank_sq[None, :] - 2 * query @ bank.T
            nearest.append(distance.argmin(dim=1))
        index = torch.cat(nearest).numpy() if nearest else np.zeros(0, dtype=np.int64)
        out.append(train_latents[index])
    return out


def cross_identity_scores(
    predicted_blend: np.ndarray,
    true_blend: np.ndarray,
    valid: np.ndarray,
    names: Sequence[str] | None = None,
    min_std: float = 0.02,
) -> dict[str, object]:
    """Blend-weight error of an avatar driven by another identity whose true expression is known.

    ``predicted_blend`` (decoded from the animator's latents) and ``true_blend`` are ``(L, K)``; ``valid (L,)``
    marks the frames scored. Each identity has its own neutral face, so a constant per-identity offset is
    removed first: the mean over the scored frames, of the prediction and of the truth alike.

    ``relative_error`` is the squared error summed over the shapes the driver moves (standard deviation above
    ``min_std``) divided by the truth's variance summed over them: 0 for a perfect predictor, exactly 1 for any
    constant prediction (predict-the-mean), above 1 for one that moves the wrong way. Per shape the same ratio.
    """
    ok = np.asarray(valid, dtype=bool)
    if predicted_blend.shape != true_blend.shape or len(ok) != len(true_blend):
        raise ValueError(f"blend weights {predicted_blend.shape} and {true_blend.shape}, valid {ok.shape}: "
                         "one row per frame in each")
    if not ok.any():
        raise ValueError("no valid frame to score")
    names = list(names) if names is not None else [f"shape_{k}" for k in range(true_blend.shape[1])]
    predicted = predicted_blend[ok].astype(np.float64)
    truth = true_blend[ok].astype(np.float64)
    predicted -= predicted.mean(axis=0)
    truth -= truth.mean(axis=0)
    squared_error = ((predicted - truth) ** 2).mean(axis=0)
    variance = (truth**2).mean(axis=0)
    moving = variance > min_std**2
    per_shape = {
        name: {"mse": float(squared_error[k]), "variance": float(variance[k]),
               "relative_error": float(squared_error[k] / variance[k]) if moving[k] else None}
        for k, name in enumerate(names)
    }
    relative = float(squared_error[moving].sum() / variance[moving].sum()) if moving.any() else None
    return {"metrics": {"blend_mse": float(squared_error.mean()), "relative_error": relative,
                        "shapes_moving": int(moving.sum())},
            "per_shape": per_shape, "frames": int(len(ok)), "frames_scored": int(ok.sum())}
