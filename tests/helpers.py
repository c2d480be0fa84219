"""Test-only building blocks: where the repository and ``../shared`` are, a minimal LightningModule, a killer.

``WindowRegressor`` is like Lightning's ``BoringModel``: it exercises the real CLI, cache and DataModule without any
of the project's models, so the foundation is tested on its own. Tiny caches and random-weight avatars, which the
benchmarks use too, are in :mod:`avatar_lightning.testing`. Tests import from here, never from ``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
AVATAR_LATENT_DIM = 8  # the latent size of the session's random-weight avatar (conftest's ``avatar_dir``)


class WindowRegressor(pl.LightningModule):
    """Maps windows of features ``x (B, T, D)`` to latents ``z (B, T, Z)`` with one linear layer."""

    def __init__(self, feature_dim: int, latent_dim: int, window: int, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.linear = torch.nn.Linear(feature_dim, latent_dim)

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        assert batch["x"].shape[1] == self.hparams.window
        loss = torch.nn.functional.mse_loss(self.linear(batch["x"]), batch["z"])
        self.log(f"{stage}/loss", loss, prog_bar=True)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class KillAtStep(pl.Callback):
    """SIGKILL this process once training reaches ``step`` optimiser steps (the fault suite's killed run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
