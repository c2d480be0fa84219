"""The mesh rendering I_orig of every frame and camera (paper §4, eq. 1): the ``render-mesh`` command's work.

The re-render U-Net learns to correct exactly what it will be given at animation time, so by default the
texture is the head VAE's reconstruction (z = encode(tracked texture, blend weights), then decode), or the
decoding of existing ``latents/<run>``; ``--textures tracking`` renders the tracked textures as they are (what
the texture source does not change, such as the unsupervised mask, can be studied without a head VAE). The
template is deformed by the tracked blend weights and pose and rendered by ``render.render_textured``.

Writes, per camera, ``renders/<name>/<camera>`` ``(N, H, W, 3) uint8`` and ``renders/<name>/<camera>.mask``
``(N, H, W) uint8`` (coverage, 0 or 255). This is a chunked loop like ``avatar/latents.py`` rather than a
Lightning prediction writer (the shared writer callback did not exist yet): frames are read, decoded, rendered
and written a chunk at a time through ``CaptureCache.array_writer``, so memory stays flat in the capture's
length, and nothing appears in the manifest unless every camera completes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from rich.progress import Progress
from torch import Tensor

from avatar_lightning.cache.layout import BLEND_WEIGHTS, POSE, TEXTURES, latent_array, render_mask_name, render_name
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.cache.template import load_template
from avatar_lightning.errors import CacheError
from avatar_lightning.render import Cameras, RasterSettings, get_rasterizer, render_textured

STAGE = "render-mesh"
TextureSource = Literal["vae", "tracking", "latents"]


def _texture_source(cache: CaptureCache, source: TextureSource, model: torch.nn.Module | None,
                    latents: str | None, device: torch.device) -> Callable[[int, int], Tensor]:
    """A function ``(start, stop) -> (B, T, T, 3)`` UV textures in [0, 1] for those frames."""
    textures, blend = cache.array(TEXTURES), cache.require_finite(BLEND_WEIGHTS)

    def tracked(start: int, stop: int) -> Tensor:
        return torch.from_numpy(np.array(textures[start:stop])).to(device).float() / 255  # (B, T, T, 3)

    if source == "tracking":
        return tracked
    if model is None:
        raise CacheError(f"--textures {source} needs a head VAE checkpoint (--ckpt)")
    if source == "latents":
        if not latents:
            raise CacheError("--textures latents needs --latents RUN (the latents/<RUN> array)")
        z_all = cache.require_finite(latent_array(latents))

        def decoded(start: int, stop: int) -> Tensor:
            z = torch.from_numpy(np.array(z_all[start:stop])).to(device)
            return model.decode(z)[0].permute(0, 2, 3, 1)

        return decoded
    if source != "vae":
        raise ValueError(f"texture source must be vae, tracking or latents, got {source!r}")
    if textures.shape[1] != model.hparams.texture_size or blend.shape[1] != model.hparams.num_blend_shapes:
        raise CacheError(
            f"{cache.root}: textures {textures.shape[1]}^2 with {blend.shape[1]} blend shapes, but the "
            f"model was trained on {model.hparams.texture_size}^2 with {model.hparams.num_blend_shapes}"
        )

    def reconstructed(start: int, stop: int) -> Tensor:
        texture = tracked(start, stop).permute(0, 3, 1, 2)  # (B, 3, T, T)
        b = torch.from_numpy(np.array(blend[start:stop])).to(device)
        return model.decode(model.encode(texture, b))[0].permute(0, 2, 3, 1)

    return reconstructed


@torch.no_grad()
def render_cache(
    cache: CaptureCache,
    name: str,
    source: TextureSource = "vae",
    model: torch.nn.Module | None = None,
    latents: str | None = None,
    cameras: Sequence[str] | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> list[str]:
    """Render I_orig of every frame for ``cameras`` (default all) into ``renders/<name>/``; returns array names."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    records = [cache.camera(c) for c in cameras] if cameras else cache.cameras
    if not records:
        raise CacheError(f"{cache.root}: the manifest lists no cameras to render")
    if model is not None:
        model = model.to(device).eval()
    texture_of = _texture_source(cache, source, model, latents, device)
    mesh = load_template(cache).to(device)
    pose, blend = cache.require_finite(POSE), cache.require_finite(BLEND_WEIGHTS)
    settings = RasterSettings()
    rasterizer = get_rasterizer(settings.backend, device)
    n = cache.num_frames
    task = progress.add_task(f"render-mesh {name}", total=n) if progress else None
    written: list[str] = []
    with contextlib.ExitStack() as stack:
        outputs = []
        for record in records:
            cam = Cameras.from_dict(record).to(device)
            image_name = render_name(name, record.name)
            shape = (n, record.height, record.width)
            image = stack.enter_context(cache.array_writer(image_name, (*shape, 3), np.uint8, stage=STAGE,
                                                           per_frame=True))
            mask_name = render_mask_name(name, record.name)
            mask = stack.enter_context(cache.array_writer(mask_name, shape, np.uint8, stage=STAGE, per_frame=True))
            outputs.append((cam, image, mask))
            written += [image_name, mask_name]
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            texture = texture_of(start, stop)  # (B, T, T, 3) in [0, 1]
            vertices = mesh.deform(torch.from_numpy(np.array(blend[start:stop])).to(device),
                                   torch.from_numpy(np.array(pose[start:stop])).to(device))  # (B, V, 3)
            for cam, image, mask in outputs:
                i_orig, coverage = render_textured(mesh, vertices, texture, cam, settings, rasterizer)
                image[start:stop] = (i_orig.clamp(0, 1) * 255).round().byte().cpu().numpy()  # (B, H, W, 3)
                mask[start:stop] = (coverage[..., 0].clamp(0, 1) * 255).round().byte().cpu().numpy()  # (B, H, W)
            if progress:
                progress.update(task, completed=stop)
    return written
