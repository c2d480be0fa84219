"""What Lightning's DDP leaves to the model: every process evaluates the same model."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


class BroadcastBuffers(Callback):
    """Under DDP, rank 0's buffers (BatchNorm's running statistics) on every process before validation and test.

    DDP keeps the parameters equal on every process (each applies the same averaged gradient) but the buffers
    only by broadcasting rank 0's at the start of a training step's forward; the last step before a validation
    then updates each process's running statistics from its own samples alone. Without this each process
    scores a slightly different model (BatchNorm in eval mode), the logged scores, and the checkpoint chosen by
    them, average over those models, and the checkpoint holds rank 0's. One process, or no buffers: nothing.
    """

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        _broadcast_buffers(trainer, pl_module)

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        _broadcast_buffers(trainer, pl_module)


def _broadcast_buffers(trainer: Any, module: torch.nn.Module) -> None:
    if trainer.world_size < 2 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    with torch.no_grad():
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)
