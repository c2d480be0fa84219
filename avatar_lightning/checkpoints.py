"""Loading trained models from checkpoint files that may come from anyone (a shared avatar folder, a download).

A ``.ckpt`` is a pickle; unpickling an untrusted one can run arbitrary code. Every model the project loads goes
through :func:`load_model`, which reads with ``torch.load(weights_only=True)``: tensors, plain containers and
numbers only. The checkpoints ``fit`` writes need nothing more (their hyper-parameters are plain values), and
Lightning itself refuses a checkpoint whose hyper-parameters name an instantiator or class outside its allow-list.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, TypeVar

import torch

from avatar_lightning.errors import CacheError

ModelT = TypeVar("ModelT")


class UntrustedCheckpointError(CacheError):
    """A checkpoint holds pickled Python objects beyond tensors and plain values: it was not loaded."""


def load_model(cls: type[ModelT], path: str | Path, *, hint: str = "") -> ModelT:
    """``cls.load_from_checkpoint(path)`` on the CPU in eval mode, without executing pickled code.

    Raises :class:`CacheError` naming ``path`` when the file is missing, truncated, of another model class, or
    (:class:`UntrustedCheckpointError`) holds objects that only a full unpickle could rebuild. ``hint`` says
    which command makes the right file.
    """
    path = Path(path)
    name = getattr(cls, "__name__", str(cls))
    suffix = f"; {hint}" if hint else ""
    if not path.is_file():
        raise CacheError(f"{path} does not exist: no {name} checkpoint there{suffix}")
    saved = saved_class_path(path)
    if saved is not None and saved.rsplit(".", 1)[-1] != name:  # before building a model of the wrong class
        raise CacheError(f"{path} is not a {name} checkpoint (its model is {saved.rsplit('.', 1)[-1]}){suffix}")
    try:
        with warnings.catch_warnings():  # a loaded model runs inference: its training-only loss is beside the point
            warnings.filterwarnings("ignore", message="LPIPS perceptual loss is off")
            model = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)  # type: ignore[attr-defined]
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        blocked = f"it names {found.group(1)}" if found else str(err).strip().splitlines()[-1][:200]
        raise UntrustedCheckpointError(
            f"{path}: refused to load: it holds pickled Python objects, not only tensors and plain values "
            f"({blocked}); unpickling it could run code. Use a checkpoint written by `python -m avatar_lightning "
            f"fit`{suffix}"
        ) from None
    except (EOFError, OSError, zipfile.BadZipFile) as err:
        raise CacheError(f"{path} is truncated or not a checkpoint file ({type(err).__name__}: {err}){suffix}") \
            from None
    except RuntimeError as err:
        if "PytorchStreamReader" in str(err):  # torch's zip reader: a cut or damaged file, not another model
            raise CacheError(f"{path} is truncated or not a checkpoint file (the zip archive is damaged){suffix}") \
                from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CacheError(f"{path} is not a {name} checkpoint ({type(err).__name__}: {first}){suffix}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CacheError(f"{path} is not a {name} checkpoint ({type(err).__name__}: {first}){suffix}") from None
    return model.eval()


def saved_class_path(path: str | Path) -> str | None:
    """The model class a checkpoint written by ``fit`` (LightningCLI) names in its hyper-parameters, if any."""
    hparams = checkpoint_entry(path, "hyper_parameters")
    found = hparams.get("_class_path") if isinstance(hparams, dict) else None
    return found if isinstance(found, str) else None


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's parameters and buffers (names, dtypes, shapes, values): the same weights, the same
    string, wherever the file was copied; another training run, another string."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{list(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def checkpoint_entry(path: str | Path, key: str) -> Any:
    """One top-level entry of a checkpoint (e.g. ``datamodule_hyper_parameters``), read without unpickling code."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True).get(key)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        raise UntrustedCheckpointError(
            f"{path}: refused to load: it holds pickled Python objects{f' ({found.group(1)})' if found else ''}; "
            "unpickling it could run code. Use a checkpoint written by `python -m avatar_lightning fit`") from None
    except (EOFError, OSError, RuntimeError, zipfile.BadZipFile) as err:
        raise CacheError(f"{path} is truncated or not a checkpoint file; cannot read its {key!r} "
                         f"({type(err).__name__})") from None
