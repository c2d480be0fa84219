"""Torch's intra-op threads for one fit, restored afterwards.

Why: Lightning has no setting for it, and it matters for the animator's small networks (an LSTM of 128 units
over 8 frames, batch 32), whose matmuls are too small to gain much from more threads: where several fits or DDP
processes share a machine's cores, one thread each avoids oversubscription. On an idle 2-core machine two threads
are faster (``benchmarks/animator.py`` trains every cell at 2 and at 1 thread with this callback), so no experiment
file asks for it; add it to a config's ``trainer.callbacks`` where processes share cores. The process's setting
comes back when the fit ends. Under DDP each process sets its own threads.
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
