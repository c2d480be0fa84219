"""What a killed fit needs to resume as if it had never stopped, beyond what Lightning restores.

Lightning restores weights, optimisers, schedulers and loop counters from ``last.ckpt`` but not the global RNGs:
after a resume the head VAE's reparameterisation noise (and any dropout) would differ from the run it continues.
This callback's state (torch CPU and CUDA, NumPy, Python ``random``) is saved with every checkpoint and put
back when training restarts. Saving it is not enough on its own: validation draws from the same generators
(the loader's seed, any sampling in a validation step) and a resumed fit validates once more before training
(the sanity check), so the two runs' training streams would part after the first validation. Validation is
therefore isolated: the generators are put back, at its end, to where the last training batch left them.

Besides: the loggers are flushed whenever a checkpoint is written, so a SIGKILL loses no logged metric the
checkpoint covers (CSVLogger otherwise writes every 100 steps), and checkpoints are written whole or not at all.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from avatar_lightning.cache.files import atomic_path


class RNGStateCheckpoint(Callback):
    """Save and restore the global random-number generators with the checkpoint; keep validation out of them."""

    def __init__(self) -> None:
        self._training_state: _Generators | None = None  # where the last training batch left the generators
        self._loaded_state: _Generators | None = None  # from the checkpoint, put back as training starts

    @property
    def state_key(self) -> str:
        return "RNGStateCheckpoint"

    def on_train_batch_end(self, *args: Any) -> None:
        self._training_state = _Generators.capture()  # three small copies, no conversion: microseconds

    def on_sanity_check_start(self, *args: Any) -> None:
        self._training_state = _Generators.capture()

    def on_validation_end(self, *args: Any) -> None:
        # callbacks run before the ModelCheckpoint (Lightning orders it last), so the checkpoint written at the
        # end of this validation holds the training stream
        if self._training_state is not None:
            self._training_state.restore()

    def on_train_start(self, *args: Any) -> None:
        if self._loaded_state is not None:
            self._loaded_state.restore()
            self._loaded_state = None

    def state_dict(self) -> dict[str, Any]:
        return _Generators.capture().to_checkpoint()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded_state = _Generators.from_checkpoint(state_dict)


@dataclass(frozen=True)
class _Generators:
    """The global generators' states as their libraries return them."""

    torch: torch.Tensor
    numpy: tuple[Any, ...]
    python: tuple[Any, ...]
    cuda: list[torch.Tensor] | None = None

    @classmethod
    def capture(cls) -> _Generators:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), np.random.get_state(), random.getstate(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.torch)
        if self.cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.cuda)
        np.random.set_state(self.numpy)
        random.setstate(self.python)

    def to_checkpoint(self) -> dict[str, Any]:
        """Tensors and plain values only, so ``torch.load(weights_only=True)`` reads them."""
        kind, keys, pos, has_gauss, gauss = self.numpy
        version, internal, gauss_next = self.python
        state: dict[str, Any] = {
            "torch": self.torch,
            "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                      float(gauss)],
            "python": [version, list(internal), gauss_next],
        }
        if self.cuda is not None:
            state["cuda"] = self.cuda
        return state

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> _Generators:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        version, internal, gauss_next = state["python"]
        return cls(state["torch"], (kind, np.asarray(keys).astype(np.uint32), int(pos), int(has_gauss), float(gauss)),
                   (version, tuple(internal), gauss_next), state.get("cuda"))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files that appear whole or not at all.

    Lightning writes ``last.ckpt`` in place: a fit killed while it is being rewritten leaves a truncated file
    and nothing to resume from. Here the bytes go to a hidden temporary beside it and are renamed over it once
    complete (``cache.files.atomic_path``), so the previous checkpoint survives a kill.
    Remote paths (``s3://`` and the like) keep Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            super().save_checkpoint(checkpoint, temporary, storage_options)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` after every validation, improved or not, and when training ends: what a resume needs.

    A monitored ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only when its metric improves (a
    killed fit would resume from an older step), and at the end of training only if it never wrote one (the
    steps after the last validation would be lost). This one keeps exactly one file, ``last.ckpt``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"filename": "last", "enable_version_counter": False, **kwargs})

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # Lightning's own rule: not twice for one step
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


class FlushLogsWithCheckpoint(Callback):
    """Write the loggers' buffered metrics to disk whenever a checkpoint is saved."""

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            logger.save()

