"""The animator's networks (paper §5, figure 4): windows of features x ``(B, T, D)`` -> latents y ``(B, T, Z)``.

Three backbones behind one signature, so the ablation grid swaps them by name:

- ``mlp``: frame by frame, no temporal context (the paper's first design);
- ``cnn``: temporal 1-D convolutions over the window (symmetric context);
- ``lstm``: a unidirectional LSTM over the window (the paper's choice).

The residual encoder computes, during training only, one small vector per window from the *target* latents z;
it is concatenated to every frame's features before the backbone. At inference the residual is zero.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Backbone = Literal["mlp", "cnn", "lstm"]
BACKBONES: tuple[str, ...] = ("mlp", "cnn", "lstm")
LEAKINESS = 1e-2  # "All Leaky-ReLU layers have a leakiness of 1.0e-2" (§5)


class ResidualEncoder(nn.Module):
    """Target latents ``(B, T, Z)`` -> one residual per window ``(B, R)``.

    As the paper gives it: four Conv1d (kernel 5, zero padding 2), each followed by LeakyReLU(0.01) and
    BatchNorm, then the mean over the window's frames. The last BatchNorm centres every residual channel on
    zero over a batch, which is why feeding zeros at inference means "the average residual".
    """

    def __init__(self, latent_dim: int, residual_dim: int, channels: int = 64) -> None:
        super().__init__()
        if residual_dim < 1:
            raise ValueError(f"residual_dim must be >= 1, got {residual_dim}")
        widths = [latent_dim, channels, channels, channels, residual_dim]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv1d(c_in, c_out, kernel_size=5, padding=2), nn.LeakyReLU(LEAKINESS), nn.BatchNorm1d(c_out)]
        self.layers = nn.Sequential(*layers)
        self.residual_dim = residual_dim

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z.transpose(1, 2)).mean(dim=2)


class WindowInput(nn.Module):
    """The first layer of every backbone: ``LeakyReLU(W [x_t ; r] + b)`` for each frame t.

    This is the residual "concatenated to every frame's features" followed by a linear layer, computed as
    ``W_x x_t + W_r r``: the same function, but the residual's term is computed once per window, and the gradient
    that flows back into the residual encoder never needs the (2048-wide) gradient with respect to x.
    """

    def __init__(self, feature_dim: int, residual_dim: int, hidden: int) -> None:
        super().__init__()
        self.features = nn.Linear(feature_dim, hidden)
        self.residual = nn.Linear(residual_dim, hidden, bias=False) if residual_dim > 0 else None
        self.activation = nn.LeakyReLU(LEAKINESS)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        h = self.features(x)
        if self.residual is not None and residual is not None:
            h = h + self.residual(residual)[:, None, :]
        return self.activation(h)


class FrameMLP(nn.Module):
    """Frame-wise MLP after the input layer: each output frame sees only its own input frame."""

    def __init__(self, hidden: int, out_dim: int, layers: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for _ in range(layers - 1):  # the input layer is the first of `layers`
            blocks += [nn.Linear(hidden, hidden), nn.LeakyReLU(LEAKINESS)]
        self.layers = nn.Sequential(*blocks, nn.Linear(hidden, out_dim))

    @property
    def out(self) -> nn.Linear:
        """The output projection (every backbone names it ``out``)."""
        return self.layers[-1]

    def forward(self, h: Tensor) -> Tensor:
        return self.layers(h)


class TemporalCNN(nn.Module):
    """``layers`` Conv1d over time (kernel 5, zero padding 2) after the input layer, then a projection."""

    def __init__(self, hidden: int, out_dim: int, layers: int) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        for _ in range(layers):
            convs += [nn.Conv1d(hidden, hidden, kernel_size=5, padding=2), nn.LeakyReLU(LEAKINESS)]
        self.convs = nn.Sequential(*convs)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.convs(h.transpose(1, 2)).transpose(1, 2))


class RecurrentLSTM(nn.Module):
    """A unidirectional LSTM (causal: frame t sees frames <= t) of ``layers`` layers, then a projection."""

    def __init__(self, hidden: int, out_dim: int, layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(hidden, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.lstm(h)[0])


def build_backbone(name: str, hidden: int, out_dim: int, layers: int) -> nn.Module:
    """The backbone called ``name`` (one of :data:`BACKBONES`), taking the input layer's ``(B, T, hidden)``."""
    classes = {"mlp": FrameMLP, "cnn": TemporalCNN, "lstm": RecurrentLSTM}
    if name not in classes:
        raise ValueError(f"unknown animator backbone {name!r}; choose one of {BACKBONES}")
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    return classes[name](hidden, out_dim, layers)


class AnimatorNet(nn.Module):
    """Normalised features ``(B, T, D)`` (+ target latents during training) -> normalised latents ``(B, T, Z)``.

    Args:
        feature_dim: D.
        latent_dim: Z.
        backbone: ``mlp``, ``cnn`` or ``lstm``.
        hidden: width of the input layer and the backbone.
        layers: layers of the MLP (input layer included), temporal convolutions (CNN) or stacked LSTM layers.
        residual_dim: R, the size of the training-time residual; 0 trains without one.
        residual_channels: width of the residual encoder's convolutions.
        linear_skip: add a linear map of each frame's features to the backbone's output, and start the backbone's
            output projection at zero, so that a fresh network is that linear map alone (``models.animator`` sets
            it to the least-squares fit on the training frames before the first step; the backbone learns what is
            left).
    """

    def __init__(self, feature_dim: int, latent_dim: int, backbone: Backbone = "lstm", hidden: int = 128,
                 layers: int = 2, residual_dim: int = 0, residual_channels: int = 32,
                 linear_skip: bool = False) -> None:
        super().__init__()
        self.feature_dim, self.latent_dim, self.residual_dim = feature_dim, latent_dim, residual_dim
        self.residual = ResidualEncoder(latent_dim, residual_dim, residual_channels) if residual_dim > 0 else None
        self.inputs = WindowInput(feature_dim, residual_dim, hidden)
        self.backbone = build_backbone(backbone, hidden, latent_dim, layers)
        self.skip = nn.Linear(feature_dim, latent_dim) if linear_skip else None
        if linear_skip:
            nn.init.zeros_(self.backbone.out.weight)
            nn.init.zeros_(self.backbone.out.bias)

    def forward(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        """``target`` (normalised z of the same window) feeds the residual; ``None`` (inference) means zero."""
        if x.shape[-1] != self.feature_dim:
            raise ValueError(f"features have {x.shape[-1]} values per frame; this animator takes {self.feature_dim}")
        residual = self.residual(target) if self.residual is not None and target is not None else None
        return self.animate(x, residual)

    def animate(self, x: Tensor, residual: Tensor | None) -> Tensor:
        """The animator proper: features and a residual per window ``(B, R)`` (None: zero) -> latents."""
        return self.from_embedded(self.embed(x, residual))

    def embed(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """Frame-wise part ``(..., D)`` -> ``(..., hidden [+ Z])``: the input layer's output, and the linear skip's
        latents where there is one. Overlapping windows share it (``models.animator.Animator.embed``)."""
        h = self.inputs(x, residual)
        return h if self.skip is None else torch.cat([h, self.skip(x)], dim=-1)

    def from_embedded(self, h: Tensor) -> Tensor:
        """Windows of :meth:`embed`'s output ``(B, T, hidden [+ Z])`` -> latents ``(B, T, Z)``."""
        if self.skip is None:
            return self.backbone(h)
        hidden = h.shape[-1] - self.latent_dim
        return self.backbone(h[..., :hidden]) + h[..., hidden:]
