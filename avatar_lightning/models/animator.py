"""The animator (paper §5): person-independent features x -> the avatar's latents z, trained on windows of 8.

Whole sequences are predicted with overlapping windows (stride 1 by default) whose outputs are averaged per
frame. Why: the networks were trained on 8-frame windows that start from an empty LSTM state, so every
prediction is made in the conditions of training, and averaging the up-to-8 estimates of each frame smooths
the window seams that a tiling would leave. The cost is a bounded look-ahead of ``window - 1`` frames in
streaming (:class:`AnimatorStream`, 280 ms at 25 fps) and ``window / stride`` forward passes per frame.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from avatar_lightning.cache.files import atomic_write_text
from avatar_lightning.cache.layout import BLEND_WEIGHTS
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError
from avatar_lightning.nets.animator import BACKBONES, AnimatorNet, Backbone
from avatar_lightning.scoring import (
    BASELINES,
    baseline_label,
    blend_decoder,
    mean_baseline,
    nearest_neighbour_baseline,
    score_sequences,
)


def masked_mse(prediction: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error over the frames whose features are valid; ``valid (B, T)`` bool."""
    weight = valid.to(prediction.dtype)[..., None]
    return ((prediction - target) ** 2 * weight).sum() / (weight.sum() * prediction.shape[-1]).clamp_min(1.0)


class Animator(pl.LightningModule):
    """Windows of features ``x (B, T, D)`` -> latents ``y (B, T, Z)``, MSE to the head VAE's ``z``.

    Features and latents are normalised with the training split's mean and standard deviation (buffers, so
    they travel in the checkpoint); the loss is the paper's MSE in the latent space itself.

    Args:
        features: the feature output the animator reads (``features/<features>``); recorded so animate uses the
            same extractor and a different one is refused.
        backbone: ``mlp`` (frame-wise), ``cnn`` (temporal convolutions) or ``lstm`` (the paper's).
        hidden: width of the backbone (the paper gives none; 128 keeps the paper's 15 000 steps to minutes on a CPU).
        layers: hidden layers (mlp), convolutions (cnn) or stacked LSTM layers (lstm).
        residual_dim: size of the training-time residual computed from the target z (0: none). It is
            concatenated to every frame's features; at inference it is zero.
        residual_channels: width of the residual encoder's convolutions.
        linear_skip: a linear map from each frame's features to its latents beside the backbone, set to the
            ridge-regression fit of the training frames before the first step (``ridge``); the backbone's output
            starts at zero and learns what the linear map misses. Why: the features are landmarks and the head
            VAE's geometry code is linear in the blend weights fitted to them, so most of the mapping is linear;
            the backbone alone, trained by MSE for a budget of steps, shrank it towards the mean (shared anchor,
            1500 steps, 125 held-out frames: decoded mesh Pearson 0.82 and 75 % of the geometry code's spread,
            where the ridge fit alone gives 0.89 and 80 %). False: the paper's animator (and the checkpoints
            made before it).
        ridge: the ridge penalty of that fit, relative to each standardised feature's energy (1 per frame).
        lr: Adam's learning rate (the paper's 1e-4).
        lr_gamma: ExponentialLR's factor (the paper's 0.96).
        lr_decay_every: optimizer steps between two decays. The paper does not say; per step would shrink the
            rate to nothing (0.96^15000), so it decays every 500 steps: 30 times over 15 000 steps, to 0.29x.
        window: frames per window (the paper's 8); must match the datamodule's.
        predict_stride: frames between the overlapping windows of a sequence prediction (1: every window).
        head_vae_checkpoint: the head VAE that decodes z to blend weights when scoring; None takes the one
            ``encode`` recorded for the latents in the cache.
        test_after_fit: score the held-out sequence right after ``fit`` (``python -m avatar_lightning fit``).
        feature_dim, latent_dim: D and Z; None reads them from the datamodule at ``fit``.
    """

    def __init__(
        self,
        features: str = "mediapipe",
        backbone: Backbone = "lstm",
        hidden: int = 128,
        layers: int = 2,
        residual_dim: int = 0,
        residual_channels: int = 32,
        linear_skip: bool = False,
        ridge: float = 0.03,
        lr: float = 1e-4,
        lr_gamma: float = 0.96,
        lr_decay_every: int = 500,
        window: int = 8,
        predict_stride: int = 1,
        head_vae_checkpoint: str | None = None,
        test_after_fit: bool = True,
        feature_dim: int | None = None,
        latent_dim: int | None = None,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown animator backbone {backbone!r}; choose one of {BACKBONES}")
        if predict_stride < 1 or lr_decay_every < 1 or window < 1:
            raise ValueError("window, predict_stride and lr_decay_every must be >= 1")
        if ridge <= 0:
            raise ValueError(f"ridge must be > 0 (the linear skip's penalty), got {ridge}")
        self.save_hyperparameters()
        self.test_after_fit = test_after_fit
        self.net: AnimatorNet | None = None
        if feature_dim is not None and latent_dim is not None:
            self._build(feature_dim, latent_dim)
        self._test_outputs: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ construction
    def _build(self, feature_dim: int, latent_dim: int) -> None:
        self.hparams.feature_dim, self.hparams.latent_dim = feature_dim, latent_dim
        h = self.hparams
        self.net = AnimatorNet(feature_dim, latent_dim, h.backbone, h.hidden, h.layers, h.residual_dim,
                               h.residual_channels, h.get("linear_skip", False))
        for name, size in (("feature_mean", feature_dim), ("feature_std", feature_dim),
                           ("latent_mean", latent_dim), ("latent_std", latent_dim)):
            fill = torch.zeros(size) if name.endswith("mean") else torch.ones(size)
            self.register_buffer(name, fill)

    @property
    def window(self) -> int:
        return int(self.hparams.window)

    def _datamodule(self) -> Any:
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def setup(self, stage: str) -> None:
        datamodule = self._datamodule()
        if datamodule is None:
            if self.net is None:
                raise CacheError("Animator needs feature_dim and latent_dim, or an AnimatorDataModule to read them")
            return
        if datamodule.window != self.hparams.window:
            raise CacheError(f"the datamodule gives windows of {datamodule.window} frames but this animator uses "
                             f"{self.hparams.window}; set data.init_args.window to {self.hparams.window}")
        data_features = getattr(datamodule, "features", self.hparams.features)
        if data_features != self.hparams.features:
            raise CacheError(f"this animator reads features {self.hparams.features!r} but the datamodule gives "
                             f"{data_features!r}; set data.init_args.features to {self.hparams.features!r}")
        sizes = (datamodule.feature_dim, datamodule.latent_dim)
        if self.net is None:
            self._build(*sizes)
        elif sizes != (self.hparams.feature_dim, self.hparams.latent_dim):
            raise CacheError(
                f"{datamodule.cache_dir}: features/{data_features} has {sizes[0]} values per frame and the latents "
                f"{sizes[1]}, but this animator was trained on {self.hparams.feature_dim} and "
                f"{self.hparams.latent_dim}; extract the features it was trained on or train a new one"
            )
        if stage == "fit" and self.global_step == 0:
            for name, value in datamodule.statistics().items():
                getattr(self, name).copy_(torch.from_numpy(value))
            if self.net.skip is not None:
                self._fit_linear_skip(datamodule.training_chunks())

    @torch.no_grad()
    def _fit_linear_skip(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """The linear skip := ridge regression of the normalised latents on the normalised features (``ridge``),
        over the training frames with a valid face, from normal equations summed chunk by chunk (memory does not
        grow with the capture, as in ``AnimatorDataModule.statistics``). Closed form in a few lines of torch: no
        maintained library here fits a ridge from streamed sums."""
        sums: dict[str, Tensor] = {}
        for features, latents in chunks:
            x = self.normalise_features(torch.from_numpy(features).double())
            z = (torch.from_numpy(latents).double() - self.latent_mean.double()) / self.latent_std.double()
            for name, value in (("n", torch.tensor(float(len(x)), dtype=x.dtype)), ("x", x.sum(0)),
                                ("z", z.sum(0)), ("xx", x.T @ x), ("xz", x.T @ z)):
                sums[name] = sums[name] + value if name in sums else value
        n = sums["n"]
        x_mean, z_mean = sums["x"] / n, sums["z"] / n
        covariance = sums["xx"] / n - torch.outer(x_mean, x_mean)
        cross = sums["xz"] / n - torch.outer(x_mean, z_mean)
        eye = torch.eye(len(x_mean), dtype=x_mean.dtype)
        weight = torch.linalg.solve(covariance + self.hparams.ridge * eye, cross)  # (D, Z)
        self.net.skip.weight.copy_(weight.T)
        self.net.skip.bias.copy_(z_mean - x_mean @ weight)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.hparams.lr_gamma)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": self.hparams.lr_decay_every}}

    # ------------------------------------------------------------------ the model
    def normalise_features(self, x: Tensor) -> Tensor:
        return (x - self.feature_mean) / self.feature_std

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """Raw features ``(B, T, D)`` -> latents ``(B, T, Z)``; ``z`` (training only) feeds the residual."""
        target = None if z is None else (z - self.latent_mean) / self.latent_std
        return self.net(self.normalise_features(x), target) * self.latent_std + self.latent_mean

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        residual_source = batch["z"] if self.hparams.residual_dim > 0 else None
        loss = masked_mse(self(batch["x"], residual_source), batch["z"], batch["valid"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = masked_mse(self(batch["x"]), batch["z"], batch["valid"])  # zero residual, as at inference
        self.log("val/latent_mse", loss, prog_bar=True, batch_size=len(batch["x"]), sync_dist=True)
        return loss

    def embed(self, x: Tensor) -> Tensor:
        """Raw features ``(..., D)`` -> the input layer's output ``(..., hidden)`` at inference (zero residual).

        Frame by frame and independent of the window, so overlapping windows share it: a frame in 8 windows is
        projected from its D features once, not 8 times (the input layer is the widest matmul of the animator).
        """
        return self.net.embed(self.normalise_features(x))

    def from_embedded(self, h: Tensor) -> Tensor:
        """Windows of embedded frames ``(B, T, hidden [+ Z])`` -> latents ``(B, T, Z)``: the rest of ``forward``."""
        return self.net.from_embedded(h) * self.latent_std + self.latent_mean

    @torch.no_grad()
    def predict_sequence(self, x: Tensor, chunk: int = 2048) -> Tensor:
        """Raw features of one sequence ``(L, D)`` -> latents ``(L, Z)``: overlapping windows, averaged per frame."""
        length, window = x.shape[0], min(self.window, x.shape[0])
        if x.ndim != 2 or x.shape[1] != self.hparams.feature_dim:
            raise ValueError(f"features of shape {tuple(x.shape)}; this animator takes (frames, "
                             f"{self.hparams.feature_dim}) ({self.hparams.features!r})")
        starts = list(range(0, length - window + 1, self.hparams.predict_stride))
        if starts[-1] != length - window:
            starts.append(length - window)  # the sequence's last frames get a window too
        total = x.new_zeros(length, self.hparams.latent_dim)
        count = x.new_zeros(length, 1)
        offsets = torch.arange(window, device=x.device)
        embedded = self.embed(x)  # (L, hidden): once per frame, then gathered into windows
        for i in range(0, len(starts), chunk):
            first = torch.tensor(starts[i : i + chunk], device=x.device)
            frames = first[:, None] + offsets  # (W, T)
            y = self.from_embedded(embedded[frames])
            total.index_add_(0, frames.reshape(-1), y.reshape(-1, y.shape[-1]))
            count.index_add_(0, frames.reshape(-1), torch.ones_like(frames, dtype=x.dtype).reshape(-1, 1))
        return total / count

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return {"z": self.predict_sequence(batch["x"].float()), "frame_index": batch["frame_index"]}

    def stream(self) -> AnimatorStream:
        """A frame-by-frame predictor equal to :meth:`predict_sequence` (stride 1), ``window - 1`` frames late."""
        return AnimatorStream(self)

    # ------------------------------------------------------------------ held-out scoring
    def _held_out_output(self, batch: dict[str, Any]) -> dict[str, Any]:
        prediction = self.predict_sequence(batch["x"].float().to(self.device))
        return {
            "sequence": batch["sequence"], "frame_index": batch["frame_index"].cpu().numpy(),
            "x": batch["x"].float().to(self.device), "prediction": prediction.cpu().numpy(),
            "z": batch["z"].cpu().numpy(), "valid": batch["valid"].cpu().numpy().astype(bool),
        }

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._test_outputs.append(self._held_out_output(batch))

    def on_test_epoch_start(self) -> None:
        self._test_outputs = []

    def _every_test_sequence(self, outputs: list[dict[str, Any]], datamodule: Any) -> list[dict[str, Any]]:
        """This process's outputs completed to every held-out sequence once, in the split's order.

        Under DDP the test loader is sharded (and padded with repeats), so one process saw only part of the split;
        the scores each process writes must cover all of it, as one process's would. Sequences are cheap to
        predict next to training, so the missing ones are predicted here rather than gathered across processes.
        """
        sequences = getattr(datamodule, "sequence_sets", {}).get("test")
        if sequences is None:
            return outputs
        seen = {o["sequence"]: o for o in outputs}
        return [seen.get(seq.name) or self._held_out_output(sequences[i])
                for i, seq in enumerate(sequences.sequences)]

    def on_test_epoch_end(self) -> None:
        outputs, self._test_outputs = self._test_outputs, []
        datamodule = self._datamodule()
        if datamodule is not None:
            outputs = self._every_test_sequence(outputs, datamodule)
        if datamodule is None or not outputs:
            raise CacheError("scoring the animator needs an AnimatorDataModule with a held-out test sequence")
        cache = datamodule.cache
        lengths = [len(o["z"]) for o in outputs]
        train_x, train_z = datamodule.training_frames()
        normalised = self.normalise_features(torch.from_numpy(train_x).to(self.device)).cpu().numpy()
        queries = [self.normalise_features(o["x"]).cpu().numpy() for o in outputs]
        candidates = {
            "model": [o["prediction"] for o in outputs],
            "mean": mean_baseline(train_z, lengths),
            "nearest_neighbour": nearest_neighbour_baseline(normalised, train_z, queries),
        }
        decoder, note = self._blend_decoder(cache, datamodule.latents)
        blend_true = ([np.asarray(cache.array(BLEND_WEIGHTS)[o["frame_index"]]) for o in outputs]
                      if decoder is not None else None)
        scored = {}
        for key, predictions in candidates.items():
            blend = [decoder(p) for p in predictions] if decoder is not None else None
            scored[key] = score_sequences(predictions, [o["z"] for o in outputs], [o["valid"] for o in outputs],
                                          blend, blend_true)
        reference = {}
        if decoder is not None:  # the floor no animator can go below: the blend error of the targets themselves
            floor = score_sequences([o["z"] for o in outputs], [o["z"] for o in outputs],
                                    [o["valid"] for o in outputs], [decoder(o["z"]) for o in outputs], blend_true)
            reference["blend_mse_of_target_latents"] = floor["metrics"]["blend_mse"]
        for name, value in scored["model"]["metrics"].items():
            if value is not None:
                self.log(f"test/{name}", value, sync_dist=True)  # equal on every process
        self._write_scores(scored, outputs, reference, note)

    def _blend_decoder(self, cache: CaptureCache, latents: str) -> tuple[Any, str | None]:
        """A function ``z (L, Z) -> blend weights (L, K)`` from the head VAE, or None and the reason."""
        from avatar_lightning.cache.layout import latent_source
        from avatar_lightning.models.head_vae import load_head_vae

        path = self.hparams.head_vae_checkpoint or latent_source(cache, latents)
        reason = None
        if not cache.has(BLEND_WEIGHTS):
            reason = f"no blend-shape error: the cache has no {BLEND_WEIGHTS}"
        elif path is None:
            reason = (f"no blend-shape error: no head VAE checkpoint is recorded for latents/{latents}; pass "
                      "--model.init_args.head_vae_checkpoint PATH (the checkpoint that encoded the latents)")
        elif not Path(path).is_file():
            reason = (f"no blend-shape error: the head VAE checkpoint {path} is missing; pass "
                      "--model.init_args.head_vae_checkpoint PATH (the checkpoint that encoded the latents)")
        if reason is not None:
            warnings.warn(reason, stacklevel=2)
            return None, reason
        return blend_decoder(load_head_vae(path)), None

    def _scores_dir(self) -> Path:
        log_dir = self.trainer.log_dir if self._trainer is not None else None
        return Path(log_dir or (self.trainer.default_root_dir if self._trainer is not None else "."))

    @property
    def label(self) -> str:
        """The cell's name in tables: backbone, features, and whether it has the residual."""
        h = self.hparams
        return f"{h.backbone} · {h.features}{' · residual' if h.residual_dim > 0 else ''}"

    def _write_scores(self, scored: dict[str, dict], outputs: list[dict], reference: dict, note: str | None) -> None:
        h = self.hparams
        baseline_labels = {key: baseline_label(key, h.features) for key in BASELINES}
        run_dir = self._scores_dir()
        report = {
            "label": self.label,
            "run_dir": str(run_dir),
            "model": {"backbone": h.backbone, "features": h.features, "residual_dim": h.residual_dim,
                      "hidden": h.hidden, "layers": h.layers, "window": self.window, "steps": int(self.global_step)},
            "split": "test",
            "sequences": [{"name": o["sequence"], "first": int(o["frame_index"][0]), "last": int(o["frame_index"][-1])}
                          for o in outputs],
            **{k: scored["model"][k] for k in ("frames", "frames_scored", "metrics", "per_frame")},
            "reference": reference,
            "baselines": {key: {"label": label, **{k: scored[key][k] for k in ("metrics", "per_frame")}}
                          for key, label in baseline_labels.items()},
            "notes": [note] if note else [],
        }
        if self.trainer.is_global_zero:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "scores.json", json.dumps(report, indent=1))
        self.scores = report


class AnimatorStream:
    """Streaming prediction: push one frame's features, get back the latents of frames that are final.

    Frame t is final once every window containing it has run, i.e. after frame ``t + window - 1`` arrived; the
    output equals :meth:`Animator.predict_sequence` with stride 1 (tested). ``flush`` finishes the last frames.
    Memory is one window of features and sums, whatever the length of the stream.
    """

    def __init__(self, animator: Animator) -> None:
        self.animator, self.window = animator, animator.window
        self.features: list[Tensor] = []  # the last `window` frames
        self.sums: list[Tensor] = []  # running sums of frames not yet final, oldest first
        self.counts: list[int] = []
        self.emitted = 0
        self.seen = 0

    @torch.no_grad()
    def push(self, x: Tensor) -> list[Tensor]:
        """``x (D,)`` raw features of the next frame -> the (possibly empty) list of newly final latents ``(Z,)``."""
        self.features = [*self.features, self.animator.embed(x)][-self.window :]  # embedded once per frame
        self.seen += 1
        self.sums.append(torch.zeros(self.animator.hparams.latent_dim, device=x.device))
        self.counts.append(0)
        if len(self.features) < self.window:
            return []
        y = self.animator.from_embedded(torch.stack(self.features)[None])[0]  # (T, Z), the last `window` frames
        for k in range(self.window):
            self.sums[len(self.sums) - self.window + k] += y[k]
            self.counts[len(self.counts) - self.window + k] += 1
        return [self._emit()]

    def _emit(self) -> Tensor:
        self.emitted += 1
        total, count = self.sums.pop(0), self.counts.pop(0)
        return total / count

    @torch.no_grad()
    def flush(self) -> list[Tensor]:
        """The remaining frames at the end of the stream (a stream shorter than a window runs as one window)."""
        if self.seen and self.seen < self.window:
            y = self.animator.from_embedded(torch.stack(self.features)[None])[0]
            self.sums, self.counts = [], []
            self.emitted += len(y)
            return list(y)
        out = []
        while self.sums:
            out.append(self._emit())
        return out
