"""What a killed fit needs to resume as if it had never stopped, beyond what Lightning restores.

Random-number state in the checkpoint, so a resumed fit draws what the unkilled run would have drawn.

Lightning restores weights, optimisers, schedulers and loop counters from ``last.ckpt`` but not the global RNGs:
after a resume the head VAE's reparameterisation noise (and any dropout) would differ from the run it continues.
This callback's state (torch CPU and CUDA, NumPy, Python ``random``) is saved with every checkpoint and put
back when one is loaded. And the loggers are flushed whenever a checkpoint is written, so a SIGKILL loses no
logged metric the checkpoint covers (CSVLogger otherwise writes every 100 steps).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


class RNGStateCheckpoint(Callback):
    """Save and restore the global random-number generators with the checkpoint."""

    @property
    def state_key(self) -> str:
        return "RNGStateCheckpoint"

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, np.asarray(keys).astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))


class FlushLogsWithCheckpoint(Callback):
    """Write the loggers' buffered metrics to disk whenever a checkpoint is saved."""

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            logger.save()


def _numpy_state() -> list[Any]:
    """NumPy's legacy global state as plain values and a tensor (``torch.load(weights_only=True)`` reads them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss)]


def _python_state() -> list[Any]:
    version, internal, gauss_next = random.getstate()
    return [version, list(internal), gauss_next]
