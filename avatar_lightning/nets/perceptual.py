"""LPIPS perceptual distance, built offline from a backbone file the user supplies.

``lpips`` ships its learned linear layers inside the wheel but fetches the AlexNet backbone (torchvision's
ImageNet weights) from the internet when constructed. Nothing here may download, so we construct LPIPS with a
random backbone and load the user's AlexNet file under its real keys. Without the file the perceptual loss is
off and the caller is told exactly which file is missing; a random-weight LPIPS is never used silently.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet ImageNet weights, the LPIPS 'alex' backbone


def default_backbone_path() -> Path:
    """Where torchvision itself would cache the AlexNet weights: ``$TORCH_HOME/hub/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def missing_backbone_message(path: Path) -> str:
    return (
        f"LPIPS perceptual loss is off: its AlexNet backbone file {ALEXNET_FILE} is not at {path}. To use it, "
        f"download torchvision's AlexNet ImageNet weights ({ALEXNET_FILE}) on a machine with internet access and "
        f"place the file there, or pass its path as `lpips_backbone`."
    )


class LPIPS(nn.Module):
    """Frozen LPIPS ('alex', v0.1) on images in [0, 1]; ``forward`` returns the mean distance per batch."""

    def __init__(self, backbone_path: str | Path) -> None:
        super().__init__()
        import lpips

        with warnings.catch_warnings():  # torchvision's deprecated `pretrained=` inside lpips
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False)
        state = torch.load(backbone_path, map_location="cpu", weights_only=True)
        features = {key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")}
        target = {}
        for name, _ in self.model.net.named_parameters():  # e.g. slice2.3.weight <- features.3.weight
            _, index, kind = name.split(".")
            key = f"{index}.{kind}"
            if key not in features:
                raise ValueError(f"{backbone_path}: not an AlexNet state dict (no 'features.{key}')")
            target[name] = features[key]
        self.model.net.load_state_dict(target)
        self.model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPS:  # always frozen, always in eval mode
        return super().train(False)

    def forward(self, image: Tensor, target: Tensor) -> Tensor:
        """``image, target (B, 3, H, W)`` in [0, 1] -> scalar mean LPIPS distance."""
        return self.model(image * 2 - 1, target * 2 - 1).mean()


_WARNED_MISSING: set[Path] = set()


def load_lpips(backbone_path: str | Path | None) -> LPIPS | None:
    """LPIPS if the backbone file exists (given path, else torchvision's cache location); None with a warning."""
    path = Path(backbone_path).expanduser() if backbone_path else default_backbone_path()
    if not path.is_file():
        if backbone_path:  # the user asked for it by path: that is an error, not a warning
            raise FileNotFoundError(missing_backbone_message(path))
        if path not in _WARNED_MISSING:  # once per process: the demo builds several models that train with it
            _WARNED_MISSING.add(path)
            warnings.warn(missing_backbone_message(path), stacklevel=2)
        return None
    return LPIPS(path)
