"""One interface for person-independent expression features x (paper §5), and a registry of extractors by name.

An extractor takes a batch of frames ``(B, H, W, 3) uint8`` RGB of any size and returns, for each of its named
outputs, ``(B, D) float32`` features, plus one validity mask ``(B,) bool`` (False: no face found; the row is
then filled from its neighbours after extraction, see :mod:`avatar_lightning.features.extract`). Outputs are
written as ``features/<output>.npy`` and ``features/<output>.valid.npy``; one pass may give several outputs
(DECA gives ``deca_resnet`` and ``deca_expression``).

Extractors may keep state between batches (a face tracker, a crop smoothed over time): they are fed frames in
order and :meth:`FeatureExtractor.reset` is called at every cut (a new sequence, or a jump in frame index).
They are ``nn.Module`` s so that Lightning moves their weights to the accelerator.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from avatar_lightning.errors import CacheError


@dataclass(frozen=True)
class FeatureOutput:
    """One array an extractor writes: ``features/<name>`` with ``dim`` columns; ``layout`` says what they hold."""

    name: str
    dim: int
    layout: str


@dataclass(frozen=True)
class FeatureBatch:
    """An extractor's result for ``B`` frames.

    Attributes:
        values: output name -> ``(B, D) float32`` features (rows of invalid frames are arbitrary, e.g. zero).
        valid: ``(B,) bool``, False where no face was found.
    """

    values: dict[str, Tensor]
    valid: Tensor


class FeatureExtractor(nn.Module, ABC):
    """Frames in, features and validity out. Subclasses set ``name``, ``outputs`` and implement ``forward``.

    Args:
        fps: frame rate of the frames fed in (temporal smoothing of face crops is specified in seconds).
    """

    name: ClassVar[str]
    #: False for extractors that run on the CPU whatever the accelerator (MediaPipe).
    uses_accelerator: ClassVar[bool] = True

    def __init__(self, fps: float = 25.0) -> None:
        super().__init__()
        self.fps = float(fps)

    @property
    @abstractmethod
    def outputs(self) -> tuple[FeatureOutput, ...]:
        """The arrays this extractor writes, in a fixed order."""

    @abstractmethod
    def forward(self, frames: Tensor) -> FeatureBatch:
        """``frames (B, H, W, 3) uint8`` RGB, consecutive in time -> :class:`FeatureBatch`."""

    def reset(self) -> None:
        """Forget temporal state (tracker, crop smoothing): the next frame starts a new shot."""

    def describe(self) -> dict[str, Any]:
        """Settings worth recording beside the features (stored in the cache manifest's ``meta``)."""
        return {"extractor": self.name}

    @torch.no_grad()
    def extract(self, frames: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Numpy convenience: ``(B, H, W, 3) uint8`` -> ({output: (B, D) float32}, valid (B,) bool)."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        batch = self(torch.from_numpy(np.ascontiguousarray(frames)))
        return {k: v.float().cpu().numpy() for k, v in batch.values.items()}, batch.valid.cpu().numpy()


def check_frames(frames: Tensor) -> None:
    """Reject anything but a batch of RGB uint8 frames, with a message saying what came."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be (B, H, W, 3) uint8 RGB, got {frames.dtype} {list(frames.shape)}")


# Built-in extractors, imported only when asked for (MediaPipe and torchvision are slow to import).
_BUILTIN: dict[str, str] = {
    "mediapipe": "avatar_lightning.features.mediapipe_landmarks:MediaPipeLandmarks",
    "mediapipe_blendshapes": "avatar_lightning.features.mediapipe_blendshapes:MediaPipeBlendshapes",
    "deca": "avatar_lightning.features.deca:DecaFeatures",
}
_REGISTERED: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str, factory: Callable[..., FeatureExtractor]) -> None:
    """Make ``factory(**options)`` available as ``--extractor NAME`` (e.g. a ground-truth oracle)."""
    if name in _BUILTIN or name in _REGISTERED:
        raise ValueError(f"feature extractor {name!r} is already registered")
    _REGISTERED[name] = factory


def available_extractors() -> list[str]:
    return sorted({*_BUILTIN, *_REGISTERED})


def build_extractor(name: str, **options: Any) -> FeatureExtractor:
    """The extractor registered as ``name``, constructed with ``options``."""
    if name in _REGISTERED:
        return _REGISTERED[name](**options)
    if name not in _BUILTIN:
        raise CacheError(f"unknown feature extractor {name!r}; extractors are {available_extractors()}")
    module, _, attribute = _BUILTIN[name].partition(":")
    return getattr(importlib.import_module(module), attribute)(**options)
