"""One entry point: Lightning's fit/validate/test/predict plus the pipeline's stage commands.

``python -m avatar_lightning fit --config experiments/X.yaml`` is LightningCLI (models and datamodules in
subclass mode, so a config names any ``class_path``; ``omegaconf+`` parser mode, so YAML can interpolate
and interpolations see the final values after every ``--config`` and command-line override).
Stage commands (synth, features, encode, ...) are registered in :data:`STAGES` by the module that implements
them and imported only when called, so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from avatar_lightning import __version__
from avatar_lightning.cache import CacheError

LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train a model (head VAE, re-render U-Net, animator) from an experiment file",
    "validate": "run the validation loop of a trained model",
    "test": "score a trained model on the held-out test split",
    "predict": "run a trained model over a cache and write its outputs (latents, renders, ...)",
}


@dataclass(frozen=True)
class Stage:
    """A pipeline command that is not a Lightning loop; ``target`` is ``module:function(argv) -> int``."""

    help: str
    target: str

    def load(self) -> Callable[[Sequence[str]], int]:
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


STAGES: dict[str, Stage] = {
    "prepare": Stage("turn a real actor's capture (1..N cameras) into a capture cache: pose, blend weights, textures",
                     "avatar_lightning.stages.prepare:main"),
    "synth": Stage("make the built-in synthetic multi-view actor, or another person's driving video",
                   "avatar_lightning.stages.synth:main"),
    "encode": Stage("write every frame's latent z from a trained head VAE into the cache",
                    "avatar_lightning.stages.encode:main"),
    "render-mesh": Stage("render the textured head model (I_orig) of every frame and camera into the cache",
                         "avatar_lightning.stages.render_mesh:main"),
    "inspect": Stage("summarise and validate a capture cache (sequences, cameras, arrays)",
                     "avatar_lightning.stages.inspect:main"),
    "ingest": Stage("turn a driving video (mp4, mov, avi, webm) into a one-camera capture cache",
                    "avatar_lightning.stages.ingest:main"),
    "export": Stage("pack the trained head VAE, re-render U-Net and animator with what animate needs into one folder",
                    "avatar_lightning.stages.export:main"),
    "animate": Stage("drive an exported avatar with a video of anyone: mp4 from a capture camera or an orbit",
                     "avatar_lightning.stages.animate:main"),
    "demo": Stage("the whole chain on the built-in synthetic actor, with a report folder (the README's main job)",
                  "avatar_lightning.stages.demo:main"),
    "score-transfer": Stage("how faithfully an avatar video follows its driving video (FaceMesh on both, per measure)",
                            "avatar_lightning.stages.score_transfer:main"),
    "compare": Stage("one table (markdown, CSV) and plots (PNG) of animator runs' held-out scores beside baselines",
                     "avatar_lightning.stages.compare:main"),
    "features": Stage("write person-independent expression features (mediapipe, deca) of every frame",
                      "avatar_lightning.stages.features:main"),
}


def _usage() -> str:
    width = max(len(n) for n in [*LIGHTNING_COMMANDS, *STAGES])
    lines = [
        f"avatar_lightning {__version__}: video-driven animation of neural head avatars",
        "",
        "usage: python -m avatar_lightning COMMAND [options]   (COMMAND --help for its options)",
        "",
        "training and evaluation (LightningCLI; e.g. fit --config experiments/X.yaml):",
        *(f"  {name:<{width}}  {text}" for name, text in LIGHTNING_COMMANDS.items()),
        "",
        "pipeline stages:",
        *(f"  {name:<{width}}  {stage.help}" for name, stage in STAGES.items()),
    ]
    return "\n".join(lines)


def _progress_bar_wanted(trainer_config: dict[str, Any]) -> bool:
    return trainer_config.get("enable_progress_bar", True) is not False


def build_lightning_cli(args: Sequence[str] | None, run: bool = True) -> Any:
    """Construct the project's LightningCLI; ``run=False`` only parses and instantiates (used by tests)."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
    from lightning.pytorch.loggers import CSVLogger

    class AvatarLightningCLI(LightningCLI):
        """LightningCLI with the project's defaults: CSV logs under ``runs/``, a rich progress bar, seed 0."""

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.set_defaults({
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": "runs"},
                },
                "trainer.default_root_dir": "runs",
            })

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            extra = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
            config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
            callbacks = config.get("callbacks") or []
            if _progress_bar_wanted(config) and not any(isinstance(c, RichProgressBar) for c in callbacks):
                extra.append(RichProgressBar())
            config["logger"] = _with_csv_logger(config.get("logger"), config.get("default_root_dir") or "runs")
            return self._instantiate_trainer(config, extra)

        def after_fit(self) -> None:
            """Models that ask for it (the animator) are scored on the held-out split right after training."""
            if getattr(self.model, "test_after_fit", False) and not self.trainer.interrupted:
                self.trainer.test(self.model, datamodule=self.datamodule)

    def _with_csv_logger(logger: Any, save_dir: str) -> Any:
        """CSV logs always: whatever else a config adds, metrics land in a plain ``metrics.csv`` too."""
        if logger is False:  # the user switched logging off explicitly
            return False
        loggers = [] if logger in (None, True) else list(logger) if isinstance(logger, list | tuple) else [logger]
        if not any(isinstance(item, CSVLogger) for item in loggers):
            loggers.insert(0, CSVLogger(save_dir=save_dir))
        return loggers

    return AvatarLightningCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
        args=list(args) if args is not None else None,
        run=run,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a Lightning command or a stage; returns the process exit code."""
    # Weights & Biases never needs an account or the network unless the user asks for it.
    os.environ.setdefault("WANDB_MODE", "offline")
    # Lightning's own calls into jsonargparse raise deprecation notices a user can do nothing about.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command in LIGHTNING_COMMANDS:
            # LightningCLI reads sys.argv itself when run as a program (and warns if given both).
            build_lightning_cli(None if from_command_line else argv)
            return 0
        if command in STAGES:
            return int(STAGES[command].load()(rest) or 0)
    except CacheError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2
