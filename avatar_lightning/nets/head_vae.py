"""The head model's networks (paper §4, after PHE23): a VAE over (UV texture, blend weights) and a PatchGAN.

Plain ``nn.Module``s; the training system (losses, optimisers, logging) is ``models/head_vae.py``.
Textures are ``(B, 3, T, T)`` in [0, 1] here (channels first); T is a power of two >= 16.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from avatar_lightning.nets.texture_axes import TextureDecoding, TextureEncoding, set_texture_axes


def _check_texture_size(size: int) -> int:
    if size < 16 or size & (size - 1):
        raise ValueError(f"texture_size must be a power of two >= 16, got {size}")
    return int(math.log2(size // 4))  # number of 2x resolution steps between 4x4 and the texture


# The appearance code's initial log variance where it starts on the texture's axes (standardised: unit spread over
# the frames): sigma 0.14, so that the first steps' samples stay near the code rather than drown it.
INITIAL_LOG_VAR = -4.0


def _channels(level: int, base: int, cap: int) -> int:
    return min(base * 2**level, cap)


class _StandardisedBlend(nn.Module):
    """The blend weights' per-shape mean and scale, buffers saved with the weights (identity until measured)."""

    def __init__(self, num_blend_shapes: int) -> None:
        super().__init__()
        self.register_buffer("blend_mean", torch.zeros(num_blend_shapes))
        self.register_buffer("blend_scale", torch.ones(num_blend_shapes))


class BlendEncoding(_StandardisedBlend):
    """Blend weights ``(B, K)`` -> their geometry code ``(B, G)``: a linear map of the standardised weights.

    Linear, and set to the principal axes of the training frames' blend weights when a fit starts
    (:func:`set_principal_axes`), then trained with the rest. Why: a small MLP auto-encoder, trained from a random
    start in a budget of minutes, lost the expressions that move few blend weights (anchor, 600 steps, held-out
    tail, mesh Pearson against FaceMesh on his frames: tracked 0.86, MLP 0.77 with the left brow at 0.19 and the
    one-sided smile at 0.51); the first 32 principal axes of the standardised weights keep 0.86 before any step,
    and 600 steps of training keep it (0.85-0.86). Standardised, because the mean squared error of raw weights
    lets the shapes that move most take the axes.
    """

    def __init__(self, num_blend_shapes: int, geometry_dim: int) -> None:
        super().__init__(num_blend_shapes)
        self.linear = nn.Linear(num_blend_shapes, geometry_dim)

    def forward(self, blend_weights: Tensor) -> Tensor:
        return self.linear((blend_weights - self.blend_mean) / self.blend_scale)


class BlendDecoding(_StandardisedBlend):
    """Geometry code ``(B, G)`` -> blend weights ``(B, K)``: :class:`BlendEncoding`'s transpose at the start."""

    def __init__(self, num_blend_shapes: int, geometry_dim: int) -> None:
        super().__init__(num_blend_shapes)
        self.linear = nn.Linear(geometry_dim, num_blend_shapes)

    def forward(self, code: Tensor) -> Tensor:
        return self.linear(code) * self.blend_scale + self.blend_mean


@torch.no_grad()
def set_principal_axes(encoding: BlendEncoding, decoding: BlendDecoding, blend_weights: Tensor) -> None:
    """Set the geometry code to the principal axes of ``blend_weights (N, K)`` (training frames), standardised per
    shape: the code is the weights' coordinates on the first G axes, and decoding projects back. Where G exceeds K
    (or the frames span fewer axes) the spare code dimensions start unused, weights of zero both ways."""
    blend_weights = blend_weights.double()
    mean = blend_weights.mean(0)
    scale = blend_weights.std(0, unbiased=False) + 1e-3  # a shape that never moves must not divide by zero
    _, _, axes = torch.linalg.svd((blend_weights - mean) / scale, full_matrices=False)  # (min(N, K), K)
    code = encoding.linear.out_features
    weight = axes.new_zeros(code, axes.shape[1])
    weight[: min(code, len(axes))] = axes[:code]
    for part in (encoding, decoding):
        part.blend_mean.copy_(mean)
        part.blend_scale.copy_(scale)
    encoding.linear.weight.copy_(weight)
    encoding.linear.bias.zero_()
    decoding.linear.weight.copy_(weight.T)
    decoding.linear.bias.zero_()


class HeadEncoder(nn.Module):
    """(texture, blend weights) -> (mu, log sigma^2) of the latent expression z.

    Args:
        texture_size: T, side of the square texture.
        num_blend_shapes: K.
        latent_dim: Z.
        width: channels of the first convolution (doubling per level, capped at ``max_width``).
        max_width: channel cap.
        geometry_dim: G; the first G dimensions of z are encoded from the blend weights alone (0: every dimension
            from texture and blend weights together), by :class:`BlendEncoding`. Why: given both, the encoder reads
            the expression from the texture, which is high-dimensional and holds the capture's lighting and backdrop
            too; on the anchor its decoded blend weights kept 95 % of their spread on training frames and 66 % on
            the held-out tail, and ignored the blend input (a mean texture in, 8 % of the spread out). The geometry
            part is deterministic: its log variance is 0, so the KL term is ``mu^2 / 2`` there, and
            :class:`HeadVAENet` does not sample it (the blend weights are a clean, low-dimensional signal; sampled at
            the VAE's initial sigma = 1 it drowned, anchor 8 min: decoded mesh Pearson 0.41 even on training frames).
        texture_axes: S > 0 adds to the appearance part of mu a linear code of the texture's logits averaged to
            S x S (:class:`~avatar_lightning.nets.texture_axes.TextureEncoding`, set to their principal axes when a
            fit starts); the convolutions' part of mu then starts at zero and its sigma small, so training begins
            from that code. 0: the convolutions alone.
    """

    def __init__(self, texture_size: int, num_blend_shapes: int, latent_dim: int, width: int = 32,
                 max_width: int = 256, geometry_dim: int = 0, texture_axes: int = 0) -> None:
        super().__init__()
        if not 0 <= geometry_dim < latent_dim:
            raise ValueError(f"geometry_dim must be in [0, latent_dim = {latent_dim}), got {geometry_dim}")
        self.geometry_dim = geometry_dim
        levels = _check_texture_size(texture_size)
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2)]
        for level in range(levels):
            cin, cout = _channels(level, width, max_width), _channels(level + 1, width, max_width)
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
        self.texture = nn.Sequential(*layers, nn.Flatten())  # (B, C * 4 * 4)
        texture_features = _channels(levels, width, max_width) * 16
        self.blend = nn.Sequential(nn.Linear(num_blend_shapes, 128), nn.LeakyReLU(0.2), nn.Linear(128, 128),
                                   nn.LeakyReLU(0.2))
        self.joint = nn.Sequential(nn.Linear(texture_features + 128, 512), nn.LeakyReLU(0.2))
        self.mu = nn.Linear(512, latent_dim - geometry_dim)
        self.log_var = nn.Linear(512, latent_dim - geometry_dim)
        if geometry_dim:
            self.geometry = BlendEncoding(num_blend_shapes, geometry_dim)
        self.axes = TextureEncoding(texture_size, texture_axes, latent_dim - geometry_dim) if texture_axes else None
        if texture_axes:
            nn.init.zeros_(self.mu.weight)
            nn.init.zeros_(self.mu.bias)
            nn.init.constant_(self.log_var.bias, INITIAL_LOG_VAR)

    def forward(self, texture: Tensor, blend_weights: Tensor) -> tuple[Tensor, Tensor]:
        """``texture (B, 3, T, T)`` in [0, 1], ``blend_weights (B, K)`` -> ``mu, log_var (B, Z)``."""
        blend = self.blend(blend_weights)
        h = self.joint(torch.cat([self.texture(texture * 2 - 1), blend], dim=1))
        mu, log_var = self.mu(h), self.log_var(h)
        if self.axes is not None:
            mu = mu + self.axes(texture)
        if self.geometry_dim:
            mu = torch.cat([self.geometry(blend_weights), mu], dim=1)
            log_var = torch.cat([log_var.new_zeros(len(log_var), self.geometry_dim), log_var], dim=1)
        return mu, log_var.clamp(-12.0, 8.0)


class HeadDecoder(nn.Module):
    """z -> (texture, blend weights): the avatar's appearance and geometry from one latent vector.

    With ``mean_texture`` the texture is the person's mean texture plus what the convolutions add (in logits:
    ``sigmoid(mean_logit + conv(z))``, the last convolution starting at zero). Why: decoded from a 4x4 code alone,
    most of the early training goes into drawing the static face, and what moves (mouth, eyes, brows) is a small
    change on top that an L1 loss learns last: a short fit decodes every latent to nearly the same face.
    ``mean_logit`` is a buffer the training system fills from the data (``models.head_vae``).
    With ``texture_axes`` S > 0 (``mean_texture`` required) the appearance part of z also decodes linearly to a
    change of logits at S x S, upsampled (:class:`~avatar_lightning.nets.texture_axes.TextureDecoding`).
    With ``geometry_dim`` G > 0 the blend weights are decoded from the first G dimensions of z alone (the ones
    :class:`HeadEncoder` encodes from the blend weights alone), by :class:`BlendDecoding`; the texture reads all of z.
    """

    def __init__(self, texture_size: int, num_blend_shapes: int, latent_dim: int, width: int = 32,
                 max_width: int = 256, mean_texture: bool = False, geometry_dim: int = 0,
                 texture_axes: int = 0) -> None:
        super().__init__()
        if texture_axes and not mean_texture:
            raise ValueError("texture_axes codes the change from the person's mean texture: it needs mean_texture")
        self.geometry_dim = geometry_dim
        levels = _check_texture_size(texture_size)
        top = _channels(levels, width, max_width)
        self.top_channels = top
        self.fc = nn.Sequential(nn.Linear(latent_dim, top * 16), nn.LeakyReLU(0.2))
        layers: list[nn.Module] = []
        for level in reversed(range(levels)):
            cin, cout = _channels(level + 1, width, max_width), _channels(level, width, max_width)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1),
                       nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
        self.mean_texture = mean_texture
        if mean_texture:
            out = nn.Conv2d(width, 3, 3, padding=1)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.texture = nn.Sequential(*layers, out)
            self.register_buffer("mean_logit", torch.zeros(1, 3, texture_size, texture_size))
        else:
            self.texture = nn.Sequential(*layers, nn.Conv2d(width, 3, 3, padding=1), nn.Sigmoid())
        self.axes = TextureDecoding(texture_size, texture_axes, latent_dim - geometry_dim) if texture_axes else None
        self.blend: nn.Module = (BlendDecoding(num_blend_shapes, geometry_dim) if geometry_dim else
                                 nn.Sequential(nn.Linear(latent_dim, 128), nn.LeakyReLU(0.2),
                                               nn.Linear(128, num_blend_shapes)))

    def blend_weights(self, z: Tensor) -> Tensor:
        """``z (B, Z)`` -> ``blend_weights (B, K)``: the geometry alone."""
        return self.blend(z[:, : self.geometry_dim] if self.geometry_dim else z)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z (B, Z)`` -> ``texture (B, 3, T, T)`` in [0, 1] and ``blend_weights (B, K)``.

        The texture reads the geometry part as given (no gradient into it): that part is the blend weights' own
        code, learnt from them alone."""
        g = self.geometry_dim
        code = torch.cat([z[:, :g].detach(), z[:, g:]], dim=1) if g else z
        # z.shape[0], not len(z): an int would fix the batch size in torch.export
        h = self.fc(code).view(z.shape[0], self.top_channels, 4, 4)
        texture = self.texture(h)
        if self.axes is not None:
            texture = texture + self.axes(z[:, g:])
        if self.mean_texture:
            texture = torch.sigmoid(texture + self.mean_logit)
        return texture, self.blend_weights(z)


class HeadVAENet(nn.Module):
    """Encoder and decoder together; ``forward`` samples z with the reparameterisation trick when training.

    ``channels_last`` keeps the convolutions' weights and activations in NHWC order: the same numbers, and
    oneDNN's convolutions (forward and backward) on CPU, tensor cores on GPU, run faster on it
    (``benchmarks/networks.py``).
    """

    def __init__(self, texture_size: int = 128, num_blend_shapes: int = 17, latent_dim: int = 64, width: int = 32,
                 max_width: int = 256, channels_last: bool = True, mean_texture: bool = False,
                 geometry_dim: int = 0, texture_axes: int = 0) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = HeadEncoder(texture_size, num_blend_shapes, latent_dim, width, max_width, geometry_dim,
                                   texture_axes)
        self.decoder = HeadDecoder(texture_size, num_blend_shapes, latent_dim, width, max_width, mean_texture,
                                   geometry_dim, texture_axes)
        if channels_last:  # activations follow: a convolution with channels-last weights outputs channels-last
            self.to(memory_format=torch.channels_last)

    def geometry_parameters(self) -> list[nn.Parameter]:
        """The blend weights' linear code (``geometry_dim`` > 0; else none): its encoding and decoding."""
        if not self.encoder.geometry_dim:
            return []
        return [*self.encoder.geometry.parameters(), *self.decoder.blend.parameters()]

    def set_principal_axes(self, blend_weights: Tensor) -> None:
        """The geometry code from the principal axes of ``blend_weights (N, K)`` (:func:`set_principal_axes`)."""
        if self.encoder.geometry_dim:
            set_principal_axes(self.encoder.geometry, self.decoder.blend, blend_weights)

    def set_texture_axes(self, textures: Tensor) -> None:
        """The appearance code on the principal axes of ``textures (N, 3, T, T)`` in [0, 1] (training frames;
        ``texture_axes`` > 0, else nothing), around the decoder's mean texture (set that first)."""
        if self.encoder.axes is not None:
            set_texture_axes(self.encoder.axes, self.decoder.axes, textures, self.decoder.mean_logit)

    def forward(self, texture: Tensor, blend_weights: Tensor, sample: bool | None = None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns reconstructed ``texture, blend_weights`` and the posterior's ``mu, log_var``."""
        mu, log_var = self.encoder(texture, blend_weights)
        sample = self.training if sample is None else sample
        z = mu
        if sample:  # the appearance part only (``HeadEncoder``'s geometry part is deterministic)
            geometry = self.encoder.geometry_dim
            noise = torch.randn_like(mu[:, geometry:]) * torch.exp(0.5 * log_var[:, geometry:])
            z = torch.cat([mu[:, :geometry], mu[:, geometry:] + noise], dim=1)
        texture_out, blend_out = self.decoder(z)
        return texture_out, blend_out, mu, log_var


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN: a grid of real/fake logits, each judging one patch of the texture.

    The receptive field of one output logit is ``receptive_field(num_layers)`` texels (70 for 3 layers, as in
    pix2pix). Instance norm, since batch statistics of real and fake batches would leak between them.
    """

    def __init__(self, num_layers: int = 3, width: int = 64, max_width: int = 512) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = [nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = width
        for level in range(1, num_layers + 1):
            out = min(width * 2**level, max_width)
            stride = 2 if level < num_layers else 1
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1), nn.InstanceNorm2d(out, affine=True),
                       nn.LeakyReLU(0.2)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        self.num_layers = num_layers

    @staticmethod
    def receptive_field(num_layers: int) -> int:
        """Texels seen by one output logit: kernels of 4 with strides 2 (num_layers times), then two of stride 1."""
        field = 4  # the final stride-1 convolution
        field = field + 3  # the stride-1 convolution of the last level
        for _ in range(num_layers):  # num_layers stride-2 convolutions (the first one included)
            field = 2 * field + 2
        return field

    def forward(self, texture: Tensor) -> Tensor:
        """``texture (B, 3, T, T)`` in [0, 1] -> logits ``(B, 1, P, P)``."""
        return self.net(texture * 2 - 1)
