"""Image grids to every logger that takes images, and as PNG files beside the CSV log."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image


def log_image_grid(trainer: pl.Trainer, key: str, rows: list[Tensor], step: int) -> Path | None:
    """Log ``rows`` (each ``(N, 3, H, W)`` in [0, 1], same N, H, W) as one grid, a row per tensor.

    Writes ``<log_dir>/images/<key>/step_<step>.png`` (CSV logging has no image channel) and sends the grid
    to loggers with an image API (Weights & Biases, TensorBoard). Rank zero writes; every process must call it.
    """
    log_dir = trainer.log_dir  # a broadcast under DDP: asked on rank zero alone, it waits for the others forever
    if not trainer.is_global_zero:
        return None
    images = torch.cat([r.detach().float().cpu().clamp(0, 1) for r in rows])
    grid = make_grid(images, nrow=len(rows[0]), padding=2)
    path = None
    if log_dir is not None:
        path = Path(log_dir) / "images" / key.replace("/", "_") / f"step_{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
    for logger in trainer.loggers:
        if isinstance(logger, pl.loggers.WandbLogger):
            logger.log_image(key=key, images=[grid], step=step)
        elif isinstance(logger, pl.loggers.TensorBoardLogger):
            logger.experiment.add_image(key, grid, global_step=step)
    return path


class ReconstructionGrid(pl.Callback):
    """Each validation, a grid of inputs over their reconstructions from the first validation batch.

    The module's ``validation_step`` returns a dict holding ``(B, 3, H, W)`` images in [0, 1] under the keys
    named here.

    Args:
        keys: output keys, one grid row each (e.g. ``["input", "reconstruction"]``).
        max_images: columns of the grid.
        name: logger key of the grid.
    """

    def __init__(self, keys: tuple[str, ...] = ("input", "reconstruction"), max_images: int = 8,
                 name: str = "val/reconstruction") -> None:
        self.keys = tuple(keys)
        self.max_images = max_images
        self.name = name
        self.last_path: Path | None = None

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                                batch: object, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not isinstance(outputs, dict):
            return
        missing = [k for k in self.keys if k not in outputs]
        if missing:
            raise KeyError(f"ReconstructionGrid: validation_step returned no {missing}")
        rows = [outputs[k][: self.max_images] for k in self.keys]
        self.last_path = log_image_grid(trainer, self.name, rows, trainer.global_step)
