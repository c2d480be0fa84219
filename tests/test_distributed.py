"""Lightning DDP on CPU (gloo, two processes, launched as a user launches them): the held-out scores of a
distributed fit cover every test sequence once, and equal those of one process scoring the same checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avatar_lightning.cli import main as cli_main
from tests.conftest import REPO_ROOT
from tests.helpers import make_expression_cache

EXPERIMENTS = REPO_ROOT / "experiments"


def _animator_args(command: str, cache: Path, runs: Path) -> list[str]:
    return [command, "--config", str(EXPERIMENTS / "animator.yaml"), "--config",
            str(EXPERIMENTS / "animator_tiny.yaml"), "--model.init_args.features=expression",
            f"--data.init_args.cache_dir={cache}",
            f"--trainer.default_root_dir={runs}", f"--trainer.logger.init_args.save_dir={runs}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_a_ddp_fit_scores_every_test_sequence_once(tmp_path: Path) -> None:
    cache, _ = make_expression_cache(tmp_path / "cache", test_sequences=3)
    runs = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "avatar_lightning", *_animator_args("fit", cache.root, runs), "--trainer.max_steps=40",
         "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = runs / "expression" / "lstm_residual0"
    distributed = json.loads((run / "scores.json").read_text())
    assert sorted(s["name"] for s in distributed["sequences"]) == ["test", "test_1", "test_2"]
    assert distributed["frames"] == 60 and distributed["model"]["steps"] == 40

    checkpoint = run / "checkpoints" / "last.ckpt"
    (run / "scores.json").rename(run / "scores_ddp.json")
    assert cli_main([*_animator_args("test", cache.root, runs), "--trainer.devices=1",
                     f"--ckpt_path={checkpoint}"]) == 0
    single = json.loads(next(runs.rglob("scores.json")).read_text())
    assert single["metrics"]["latent_mse"] is not None
    for name, value in single["metrics"].items():  # blend_mse is None in both: this cache has no blend weights
        assert distributed["metrics"][name] == (value if value is None else pytest.approx(value, rel=1e-5, abs=1e-9))
