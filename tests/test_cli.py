"""The entry point: one --help, stage dispatch, and LightningCLI fit on a tiny config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from avatar_lightning.cache import CaptureCache
from avatar_lightning.cli import LIGHTNING_COMMANDS, STAGES, build_lightning_cli, main
from tests.helpers import REPO_ROOT

CONFIG = str(REPO_ROOT / "tests" / "configs" / "window_regression.yaml")


def test_help_lists_every_command() -> None:
    result = subprocess.run([sys.executable, "-m", "avatar_lightning", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in [*LIGHTNING_COMMANDS, *STAGES]:
        assert f"  {command} " in result.stdout


def test_every_stage_resolves_to_a_callable() -> None:
    for name, stage in STAGES.items():
        assert callable(stage.load()), name


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_inspect(tiny_cache: CaptureCache, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tiny_cache.root)]) == 0
    out = capsys.readouterr().out
    assert "features/toy" in out and "train_b" in out


def test_inspect_reports_a_broken_cache(tiny_cache: CaptureCache, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    np.save(tiny_cache.root / "latents" / "toy.npy", np.zeros((2, 2)))
    assert main(["inspect", str(tiny_cache.root)]) == 2
    assert "toy.npy" in capsys.readouterr().err
    assert main(["inspect", str(tiny_cache.root / "absent")]) == 2


def _fit_args(tiny_cache: CaptureCache, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", CONFIG,
        f"--data.init_args.cache_dir={tiny_cache.root}",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        *extra,
    ]


def test_fit_fast_dev_run(tiny_cache: CaptureCache, tmp_path: Path) -> None:
    assert main(_fit_args(tiny_cache, tmp_path, "--trainer.fast_dev_run=true")) == 0


def test_config_interpolation_and_defaults(tiny_cache: CaptureCache, tmp_path: Path) -> None:
    cli = build_lightning_cli(_fit_args(tiny_cache, tmp_path, "--data.init_args.window=6")[1:], run=False)
    assert cli.model.hparams.window == 6  # ${data.init_args.window}
    assert type(cli.trainer.logger).__name__ == "CSVLogger"
    assert any(type(c).__name__ == "RichProgressBar" for c in cli.trainer.callbacks)


def test_csv_logger_is_always_added(tiny_cache: CaptureCache, tmp_path: Path) -> None:
    args = ["--config", CONFIG, f"--data.init_args.cache_dir={tiny_cache.root}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger", f"--trainer.logger.save_dir={tmp_path}"]
    cli = build_lightning_cli(args, run=False)
    assert sorted(type(lg).__name__ for lg in cli.trainer.loggers) == ["CSVLogger", "TensorBoardLogger"]
    cli = build_lightning_cli([*args[:4], "--trainer.logger=false"], run=False)
    assert cli.trainer.loggers == []


def test_fit_learns_and_logs_csv(tiny_cache: CaptureCache, tmp_path: Path) -> None:
    """A short real fit: the CSV log exists and the validation loss falls."""
    import csv

    args = _fit_args(tiny_cache, tmp_path, "--trainer.max_epochs=15", "--trainer.enable_progress_bar=false")
    assert main(args) == 0
    metrics = next((tmp_path / "runs").rglob("metrics.csv"))
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("val/loss")]
    assert float(rows[-1]["val/loss"]) < 0.5 * float(rows[0]["val/loss"])
    assert (metrics.parent / "config.yaml").exists() or list((tmp_path / "runs").rglob("config.yaml"))


def test_wandb_logger_runs_offline(tiny_cache: CaptureCache, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the logger snippet writes under ./runs
    args = ["fit", "--config", CONFIG, "--config", str(REPO_ROOT / "experiments" / "loggers" / "wandb.yaml"),
            f"--data.init_args.cache_dir={tiny_cache.root}", "--trainer.max_steps=2",
            "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false"]
    assert main(args) == 0
    assert list((tmp_path / "runs" / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
    assert list((tmp_path / "runs").rglob("metrics.csv")), "the CSV log is missing beside wandb"


def test_fit_on_a_missing_cache_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["fit", "--config", CONFIG, f"--data.init_args.cache_dir={tmp_path / 'none'}",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.fast_dev_run=true"]
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err
