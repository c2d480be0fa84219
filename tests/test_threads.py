"""callbacks.threads.IntraOpThreads: the fit runs with the asked threads and the process's setting comes back."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from callbacks.threads import IntraOpThreads


class _Probe(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[int] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return self.layer(batch).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=4)


def test_the_fit_runs_with_the_asked_threads_and_restores_them(tmp_path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = _Probe()
        trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                             callbacks=[IntraOpThreads(1)])
        trainer.fit(model)
        assert model.seen == [1, 1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads"):
        IntraOpThreads(0)
