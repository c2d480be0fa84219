"""``deca``: DECA's coarse encoder E_flame (Feng et al. 2021), the paper's expression features (§5).

Built here after DECA's published code (github.com/yfeng95/DECA): ``decalib/models/encoders.py``
(``ResnetEncoder``: a ResNet-50 without its classifier, 2048-d after 7x7 average pooling, then
``Linear(2048, 1024) -> ReLU -> Linear(1024, 236)``), ``decalib/models/resnet.py`` (torchvision's Bottleneck
layout and parameter names), ``decalib/utils/config.py`` (``param_list`` shape 100, tex 50, exp 50, pose 6,
cam 3, light 27; ``jaw_type = 'aa'``: the jaw is axis-angle) and ``decalib/deca.py`` (``decompose_code``
slices the 236 values in that order; the checkpoint is a dict whose ``'E_flame'`` entry is the encoder's
state dict, beside ``'E_detail'`` and ``'D_detail'``). Input: ``decalib/datasets/datasets.py`` feeds RGB in
[0, 1] (``imread / 255``, no mean/std normalisation), 224 x 224, cropped as in :mod:`.crop`.

One pass gives two outputs:

- ``deca_resnet`` ``(N, 2048)``: the ResNet-50 output (the paper's choice),
- ``deca_expression`` ``(N, 53)``: FLAME expression (columns 0..49) then jaw pose, axis-angle (50..52).

DECA's weights (``deca_model.tar``) come from its authors and cannot be downloaded here: see
:func:`resolve_checkpoint` for where the file goes.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from avatar_lightning.errors import CacheError
from avatar_lightning.features.base import FeatureBatch, FeatureExtractor, FeatureOutput, check_frames
from avatar_lightning.features.crop import DECA_SCALE, FaceCropper

CHECKPOINT_NAME = "deca_model.tar"
CHECKPOINT_ENV = "AVATAR_LIGHTNING_DECA"
DEFAULT_CHECKPOINT = Path("~/.cache/avatar_lightning") / CHECKPOINT_NAME
DECA_RELEASE = "https://github.com/yfeng95/DECA (README: 'DECA trained model', a Google Drive link)"
INPUT_SIZE = 224
FEATURE_SIZE = 2048
# decalib/utils/config.py: cfg.model.param_list and n_<name>, in this order.
PARAMETERS: tuple[tuple[str, int], ...] = (
    ("shape", 100), ("tex", 50), ("exp", 50), ("pose", 6), ("cam", 3), ("light", 27),
)
NUM_PARAMETERS = sum(n for _, n in PARAMETERS)  # 236
EXPRESSION_DIM = 50 + 3  # expression + jaw pose


class DecaCheckpointError(CacheError):
    """DECA's weight file is missing or is not DECA's checkpoint."""


def parameter_slices() -> dict[str, slice]:
    """Where each parameter group lies in the 236 outputs: shape 0:100, tex 100:150, exp 150:200, pose 200:206
    (global 200:203, jaw 203:206), cam 206:209, light 209:236."""
    slices, start = {}, 0
    for name, size in PARAMETERS:
        slices[name] = slice(start, start + size)
        start += size
    return slices


class DecaEncoder(nn.Module):
    """DECA's ``E_flame``: images ``(B, 3, 224, 224)`` RGB in [0, 1] -> features ``(B, 2048)``, parameters ``(B, 236)``.

    Parameter names match DECA's checkpoint (``encoder.conv1.weight`` ... ``layers.2.bias``), so its
    ``'E_flame'`` state dict loads with ``strict=True``. ``num_outputs=128`` is DECA's detail encoder ``E_detail``
    (same architecture; not used here).
    """

    def __init__(self, num_outputs: int = NUM_PARAMETERS) -> None:
        super().__init__()
        from torchvision.models import resnet50

        backbone = resnet50(weights=None)  # weights come from the checkpoint; nothing is downloaded
        backbone.fc = nn.Identity()  # DECA's ResNet has no classifier: avgpool output, flattened, is the feature
        self.encoder = backbone
        self.layers = nn.Sequential(nn.Linear(FEATURE_SIZE, 1024), nn.ReLU(), nn.Linear(1024, num_outputs))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.encoder(images)  # (B, 2048); adaptive pooling equals DECA's AvgPool2d(7) at 224
        return features, self.layers(features)

    @staticmethod
    def split(parameters: Tensor) -> dict[str, Tensor]:
        """DECA's ``decompose_code``: ``(B, 236)`` -> shape, tex, exp, pose, cam ``(B, n)``; light ``(B, 9, 3)``."""
        groups = {name: parameters[:, s] for name, s in parameter_slices().items()}
        groups["light"] = groups["light"].reshape(-1, 9, 3)
        return groups

    @staticmethod
    def expression(parameters: Tensor) -> Tensor:
        """``(B, 236)`` -> ``(B, 53)``: the 50 FLAME expression coefficients, then the jaw pose (axis-angle)."""
        s = parameter_slices()
        jaw = parameters[:, s["pose"]][:, 3:]
        return torch.cat([parameters[:, s["exp"]], jaw], dim=1)


def resolve_checkpoint(path: str | os.PathLike[str] | None = None) -> Path:
    """DECA's weight file: ``path``, else ``$AVATAR_LIGHTNING_DECA``, else ``~/.cache/avatar_lightning/deca_model.tar``.

    Raises a :class:`DecaCheckpointError` that says which file is needed, where to get it and where it goes.
    """
    where = "--checkpoint" if path else (f"${CHECKPOINT_ENV}" if os.environ.get(CHECKPOINT_ENV) else "default")
    candidate = Path(path or os.environ.get(CHECKPOINT_ENV) or DEFAULT_CHECKPOINT).expanduser()
    if candidate.is_dir():
        candidate = candidate / CHECKPOINT_NAME
    if not candidate.is_file():
        raise DecaCheckpointError(
            f"DECA's weights are needed and {candidate} ({where}) does not exist. The file is {CHECKPOINT_NAME!r}, "
            f"released by DECA's authors ({DECA_RELEASE}; free for non-commercial research under their licence). "
            f"Download it yourself (nothing here downloads weights) and pass --checkpoint PATH, set "
            f"${CHECKPOINT_ENV}=PATH, or place it at {DEFAULT_CHECKPOINT}. Without it, use --extractor mediapipe."
        )
    return candidate


def _is_torch_file(path: Path) -> bool:
    """torch.save's zip format, or its legacy format (a pickle, protocol 2)."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return zipfile.is_zipfile(path) or head == b"\x80\x02"


def _load_file(path: Path, trust: bool) -> Any:
    if not _is_torch_file(path):
        raise DecaCheckpointError(f"{path} is not a readable PyTorch file; expected DECA's {CHECKPOINT_NAME}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust:
            raise DecaCheckpointError(
                f"{path} holds Python objects besides tensors, so it cannot be loaded safely "
                f"(torch.load(weights_only=True): {str(err).splitlines()[0]}). If you trust the file (DECA's own "
                "deca_model.tar), pass --trust-checkpoint (trust_checkpoint=True) to load it with pickle."
            ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise DecaCheckpointError(f"{path} is not a readable PyTorch file ({type(err).__name__}: {err}); "
                                  f"expected DECA's {CHECKPOINT_NAME}") from None
    return torch.load(path, map_location="cpu", weights_only=False)


def load_deca_encoder(path: str | os.PathLike[str] | None = None, trust_checkpoint: bool = False) -> DecaEncoder:
    """DECA's encoder with the weights of ``deca_model.tar`` (its ``'E_flame'`` entry), in eval mode.

    The file is read with ``torch.load(weights_only=True)``; one holding other Python objects is refused
    unless ``trust_checkpoint``. Every key and shape must match DECA's layout (a clear error names the first
    differences otherwise).
    """
    file = resolve_checkpoint(path)
    checkpoint = _load_file(file, trust_checkpoint)
    if not isinstance(checkpoint, dict) or "E_flame" not in checkpoint:
        keys = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise DecaCheckpointError(
            f"{file} is not DECA's {CHECKPOINT_NAME}: expected a dict with the encoder under 'E_flame' "
            f"(beside 'E_detail', 'D_detail'), found {keys}"
        )
    state = checkpoint["E_flame"]
    encoder = DecaEncoder()
    expected = encoder.state_dict()
    if not isinstance(state, dict):
        raise DecaCheckpointError(f"{file}: 'E_flame' is a {type(state).__name__}, not a state dict")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise DecaCheckpointError(
            f"{file}: 'E_flame' does not match DECA's encoder (ResNet-50 + 2048-1024-{NUM_PARAMETERS} MLP): "
            f"{len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(wrong)} of the wrong shape {wrong[:3]}"
        )
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def save_deca_checkpoint(path: str | os.PathLike[str], encoder: DecaEncoder | None = None,
                         detail_encoder: nn.Module | None = None) -> Path:
    """Write ``encoder`` (default: randomly initialised) in the layout of DECA's ``deca_model.tar``.

    ``{'E_flame': ..., 'E_detail': ..., 'D_detail': ..., 'opt': {...}, 'global_step': int, 'batch_size': int}``
    as DECA's trainer saves it. For tests and benchmarks; ``D_detail`` (the detail decoder, never read here) is a
    placeholder, and so is ``E_detail`` unless ``detail_encoder`` (``DecaEncoder(128)``) is given.
    """
    encoder = encoder or DecaEncoder()
    detail = detail_encoder.state_dict() if detail_encoder is not None else {"layers.2.bias": torch.zeros(128)}
    checkpoint = {
        "E_flame": encoder.state_dict(),
        "E_detail": detail,
        "D_detail": {"layers.0.weight": torch.zeros(1)},
        "opt": {"state": {}, "param_groups": []},
        "global_step": 0,
        "batch_size": 1,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


class DecaFeatures(FeatureExtractor):
    """``deca``: face crop (224, DECA's box, smoothed) -> DECA encoder -> ``deca_resnet`` and ``deca_expression``.

    The crop runs on the CPU frame by frame (FaceMesh tracking); the encoder runs batched on the module's
    device. A frame without a face is encoded from the last box (or the centred square) and marked invalid.

    Args:
        checkpoint: path of ``deca_model.tar`` (default: ``$AVATAR_LIGHTNING_DECA``, then
            ``~/.cache/avatar_lightning/deca_model.tar``).
        trust_checkpoint: allow a checkpoint that needs full unpickling (only for files you trust).
        fps: frame rate, for the crop's smoothing.
        encoder: an already-built encoder (tests and benchmarks), instead of loading ``checkpoint``.
    """

    name = "deca"

    def __init__(self, checkpoint: str | None = None, trust_checkpoint: bool = False, fps: float = 25.0,
                 encoder: DecaEncoder | None = None) -> None:
        super().__init__(fps)
        self.checkpoint = None if encoder is not None else str(resolve_checkpoint(checkpoint))
        self.encoder = encoder if encoder is not None else load_deca_encoder(self.checkpoint, trust_checkpoint)
        self.encoder.eval()
        self.cropper = FaceCropper(INPUT_SIZE, fps=fps)

    @property
    def outputs(self) -> tuple[FeatureOutput, ...]:
        return (
            FeatureOutput("deca_resnet", FEATURE_SIZE, "DECA E_flame ResNet-50 output after global average pooling"),
            FeatureOutput("deca_expression", EXPRESSION_DIM,
                          "columns 0..49: FLAME expression coefficients; 50..52: jaw pose, axis-angle (radians)"),
        )

    def crops(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(B, 224, 224, 3) uint8`` crops and ``found (B,)``, frame by frame through the stateful cropper."""
        results = [self.cropper(image) for image in frames]
        return np.stack([r.image for r in results]), np.array([r.found for r in results], dtype=bool)

    def forward(self, frames: Tensor) -> FeatureBatch:
        check_frames(frames)
        crops, found = self.crops(frames.cpu().numpy())
        device = next(self.encoder.parameters()).device
        images = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float() / 255  # (B, 3, 224, 224) in [0, 1]
        features, parameters = self.encoder(images)
        values = {"deca_resnet": features.float(), "deca_expression": DecaEncoder.expression(parameters).float()}
        return FeatureBatch(values, torch.from_numpy(found).to(device))

    def reset(self) -> None:
        self.cropper.reset()

    def describe(self) -> dict[str, Any]:
        return {"extractor": self.name, "checkpoint": self.checkpoint, "input_size": INPUT_SIZE,
                "crop_scale": DECA_SCALE, "normalisation": "RGB in [0, 1], no mean/std (as DECA's TestData)",
                "parameters": {name: [s.start, s.stop] for name, s in parameter_slices().items()}}

