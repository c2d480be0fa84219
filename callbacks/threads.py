"""Torch's intra-op threads for one fit, restored afterwards.

Why: the animator's networks are small (an LSTM of 128 units over 8 frames, batch 32); on a CPU, splitting each
of their small matmuls over two threads costs more in synchronisation than it gains (``benchmarks/animator.py``
measures both), while the image networks want every core. Lightning has no setting for it, so the animator's
trainer config asks for one thread with this callback; the process's setting comes back when the fit ends, so a
notebook or the demo running several fits keeps its own. Under DDP each process sets its own threads.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


class IntraOpThreads(Callback):
    """Run fit / validate / test / predict with ``threads`` intra-op threads (``torch.set_num_threads``)."""

    def __init__(self, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self._previous: int | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._previous is not None:
            torch.set_num_threads(self._previous)
            self._previous = None
