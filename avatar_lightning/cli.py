"""One entry point: Lightning's fit/validate/test/predict plus the pipeline's stage commands.

``python -m avatar_lightning fit --config experiments/X.yaml`` is LightningCLI (models and datamodules in
subclass mode, so a config names any ``class_path``; ``omegaconf+`` parser mode, so YAML can interpolate
and interpolations see the final values after every ``--config`` and command-line override).
Stage commands (synth, features, encode, ...) are registered in :data:`STAGES` by the module that implements
them and imported only when called, so ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatar_lightning import __version__
from avatar_lightning.errors import CacheError

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
    "evaluate": Stage("every animator cell beside the baselines: validation chooses; test latents, blend shapes, "
                      "images, cross-identity and real drivers", "avatar_lightning.stages.evaluate:main"),
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


CKPT_PATH_KEYWORDS = ("last", "best", "hpc", "registry")
RUN_FILES = ("config.yaml", "metrics.csv", "hparams.yaml", "checkpoints")


def refuse_reused_run_folder(log_dir: str | os.PathLike[str] | None) -> None:
    """Raise if ``log_dir`` already holds a run (a fresh fit would mix into it); resuming is ``--ckpt_path``."""
    if not log_dir:
        return
    folder = Path(log_dir)
    found = [name for name in RUN_FILES if (folder / name).exists()]
    if found:
        last = folder / "checkpoints" / "last.ckpt"
        resume = f"resume it with `--ckpt_path {last}`, " if last.is_file() else ""
        raise CacheError(f"{folder} already holds a run ({', '.join(found)}); {resume}move or delete that folder "
                         "to train it again, or give this run another name (--trainer.logger.init_args.version=...)")


def keep_metrics_on_resume(trainer: Any, ckpt_path: str | os.PathLike[str]) -> None:
    """Resuming into the killed run's folder keeps its metrics.csv up to the checkpoint's step.

    Lightning's CSVLogger deletes an existing metrics.csv when it starts; the rows before the checkpoint's step are
    put back (later rows are logged again by the resumed run), so the file holds one curve, as an unkilled run
    would have written it.
    """
    import csv

    from lightning.pytorch.loggers import CSVLogger

    from avatar_lightning.cache.files import atomic_write_text
    from avatar_lightning.checkpoints import checkpoint_entry

    step = checkpoint_entry(ckpt_path, "global_step")
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger) or not isinstance(step, int):
            continue
        metrics = Path(logger.log_dir) / "metrics.csv"
        rows: list[dict[str, str]] = []
        if metrics.is_file():
            with open(metrics, newline="") as handle:
                rows = list(csv.DictReader(handle))
        with warnings.catch_warnings():  # "Previous log files ... will be deleted": we keep them, below
            warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
            writer = logger.experiment  # starts the writer now (it removes metrics.csv)
        kept = [row for row in rows if row.get("step", "").isdigit() and int(row["step"]) < step]
        if not kept:
            continue
        keys = sorted(rows[0])
        text = io.StringIO()
        table = csv.DictWriter(text, fieldnames=keys)  # csv's \r\n, as CSVLogger writes
        table.writeheader()
        table.writerows(kept)
        atomic_write_text(metrics, text.getvalue())
        writer.metrics_keys = keys  # so its appends line up with this header


def _progress_bar_wanted(trainer_config: dict[str, Any]) -> bool:
    return trainer_config.get("enable_progress_bar", True) is not False


def _with_atomic_checkpoints(plugins: Any) -> Any:
    """The trainer's plugins plus :class:`AtomicCheckpointIO`, unless a checkpoint writer was chosen already."""
    from lightning.fabric.plugins import CheckpointIO

    from callbacks.resume import AtomicCheckpointIO

    listed = [] if plugins is None else list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    if any(isinstance(p, CheckpointIO) for p in listed):
        return plugins
    return [*listed, AtomicCheckpointIO()]


def build_lightning_cli(args: Sequence[str] | None, run: bool = True) -> Any:
    """Construct the project's LightningCLI; ``run=False`` only parses and instantiates (used by tests)."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
    from lightning.pytorch.loggers import CSVLogger

    from callbacks.distributed import BroadcastBuffers
    from callbacks.resume import FlushLogsWithCheckpoint, RNGStateCheckpoint

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
            if not any(isinstance(c, RNGStateCheckpoint) for c in callbacks):
                extra.append(RNGStateCheckpoint())  # a resumed fit draws the same noise as the run it continues
            if not any(isinstance(c, FlushLogsWithCheckpoint) for c in callbacks):
                extra.append(FlushLogsWithCheckpoint())
            if not any(isinstance(c, BroadcastBuffers) for c in callbacks):
                extra.append(BroadcastBuffers())  # under DDP every process validates rank 0's BatchNorm statistics
            config["logger"] = _with_csv_logger(config.get("logger"), config.get("default_root_dir") or "runs")
            config["plugins"] = _with_atomic_checkpoints(config.get("plugins"))
            return self._instantiate_trainer(config, extra)

        def _check_ckpt_path(self) -> str | None:
            path = self.config[self.subcommand].get("ckpt_path")
            if path and path not in CKPT_PATH_KEYWORDS and not Path(path).is_file():
                raise CacheError(f"--ckpt_path {path} does not exist; `fit` writes checkpoints to "
                                 "<trainer.default_root_dir or the logger's folder>/checkpoints/ (last.ckpt is the "
                                 "newest)")
            return path

        def _parse_ckpt_path(self) -> None:
            """A truncated checkpoint or one of another model is one clear line, not jsonargparse's usage and
            union report (or a model of another class quietly swapped in by the checkpoint's ``_class_path``)."""
            from avatar_lightning.checkpoints import saved_class_path

            subcommand = self.config.get("subcommand")
            path = self.config[subcommand].get("ckpt_path") if subcommand else None
            if path and Path(path).is_file():
                saved = saved_class_path(path)
                wanted = (self.config[subcommand].get("model") or {}).get("class_path")
                if saved and wanted and saved != wanted:
                    raise CacheError(f"--ckpt_path {path} is a checkpoint of {saved.rsplit('.', 1)[-1]}, but this "
                                     f"config's model is {wanted.rsplit('.', 1)[-1]}; give a checkpoint written by "
                                     "`fit` with this experiment's config")
            captured = io.StringIO()
            try:
                with contextlib.redirect_stderr(captured):
                    super()._parse_ckpt_path()
            except SystemExit:
                found = re.search(r"Option '([^']+)' is not accepted", captured.getvalue())
                which = f" (it holds '{found.group(1)}', which this config's model does not take)" if found else ""
                raise CacheError(f"--ckpt_path {path} is a checkpoint of another model{which}; give a checkpoint "
                                 "written by `fit` with this experiment's config") from None

        def before_fit(self) -> None:
            """A run folder with a fixed name (the animator's grid cells) is never silently reused: a second
            fresh ``fit`` would overwrite its config.yaml and append to its metrics.csv beside the old checkpoint."""
            ckpt_path = self._check_ckpt_path()
            if ckpt_path is None:
                refuse_reused_run_folder(self.trainer.log_dir)
            elif ckpt_path not in CKPT_PATH_KEYWORDS:
                keep_metrics_on_resume(self.trainer, ckpt_path)

        def before_validate(self) -> None:
            self._check_ckpt_path()

        def before_test(self) -> None:
            self._check_ckpt_path()

        def before_predict(self) -> None:
            self._check_ckpt_path()

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

    with warnings.catch_warnings():  # `demo` passes args on purpose while its own argv is in sys.argv
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within")
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


DEBUG_ENV = "AVATAR_LIGHTNING_DEBUG"
DEBUG_HINT = f"(--debug or {DEBUG_ENV}=1 shows the traceback)"


def _debug_wanted(argv: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` anywhere on the command line (removed before parsing) or ``AVATAR_LIGHTNING_DEBUG=1``."""
    wanted = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return wanted or "--debug" in argv, [arg for arg in argv if arg != "--debug"]


def _report(err: BaseException) -> int:
    """One clear line on stderr for a failure, and its exit code: 2 for bad input, 1 for anything else."""
    if isinstance(err, CacheError):
        print(f"error: {err}", file=sys.stderr)
        return 2
    if isinstance(err, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError):
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    if isinstance(err, pickle.UnpicklingError):  # e.g. Lightning's own torch.load(weights_only=True) of --ckpt_path
        found = re.search(r"GLOBAL (\S+)", str(err))
        names = f" (it names {found.group(1)})" if found else ""
        print(f"error: refused to load a checkpoint holding pickled Python objects{names}: unpickling it could run "
              "code; use a checkpoint written by `python -m avatar_lightning fit`", file=sys.stderr)
        return 2
    message = str(err).strip() or "(no message)"
    print(f"error: {type(err).__name__}: {message}\n{DEBUG_HINT}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a Lightning command or a stage; returns the process exit code.

    A failure is one ``error:`` line and exit code 2 (bad input: a missing or malformed file, a cache that
    lacks what the command needs) or 1 (anything else); the traceback only with ``--debug``.
    """
    from avatar_lightning.quiet import quiet_third_party_logs

    quiet_third_party_logs()
    # Weights & Biases never needs an account or the network unless the user asks for it.
    os.environ.setdefault("WANDB_MODE", "offline")
    # Lightning's own calls into jsonargparse raise deprecation notices a user can do nothing about.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    from_command_line = argv is None
    debug, argv = _debug_wanted(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in LIGHTNING_COMMANDS and command not in STAGES:
        print(f"error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        if command in LIGHTNING_COMMANDS:
            if from_command_line:
                sys.argv = [sys.argv[0], *argv]  # LightningCLI reads sys.argv itself (and warns if given both)
            build_lightning_cli(None if from_command_line else argv)
            return 0
        return int(STAGES[command].load()(rest) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place every failure becomes a message and an exit code
        if debug:
            raise
        return _report(err)
