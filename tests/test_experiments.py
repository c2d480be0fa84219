"""Every experiment file composes into a valid configuration and instantiates (shrunk by its _tiny overlay)."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatar_lightning.cache import CaptureCache
from avatar_lightning.cli import build_lightning_cli
from tests.helpers import REPO_ROOT

EXPERIMENTS = sorted(p for p in (REPO_ROOT / "experiments").glob("*.yaml") if not p.stem.endswith("_tiny"))


def test_there_are_experiments() -> None:
    assert EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_instantiates(experiment: Path, synthetic_tiny: CaptureCache, tmp_path: Path) -> None:
    args = ["--config", str(experiment)]
    overlay = experiment.with_name(f"{experiment.stem}_tiny.yaml")
    if overlay.exists():
        args += ["--config", str(overlay)]
    args += [f"--data.init_args.cache_dir={synthetic_tiny.root}", f"--trainer.default_root_dir={tmp_path}",
             f"--trainer.logger.init_args.save_dir={tmp_path}"]
    cli = build_lightning_cli(args, run=False)
    assert cli.model is not None and cli.datamodule is not None
    first_line = experiment.read_text().splitlines()[0]
    assert first_line.startswith("# python -m avatar_lightning"), "an experiment file opens with its command"
