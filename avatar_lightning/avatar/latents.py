"""Every frame's latent z (posterior mean) from a trained head VAE (the ``encode`` command), and its record.

Writes ``latents/<name>.npy (N, Z)`` into the cache atomically: the animator's training target. Frames are read
and encoded in chunks, so memory stays flat in the capture's length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from avatar_lightning.cache.layout import BLEND_WEIGHTS, TEXTURES, latent_array
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.checkpoints import weights_fingerprint
from avatar_lightning.errors import CacheError
from avatar_lightning.models.head_vae import load_head_vae

STAGE = "encode"


@torch.no_grad()
def encode_cache(
    model: torch.nn.Module, cache: CaptureCache, name: str, batch_size: int = 64, progress: Progress | None = None
) -> np.ndarray:
    """Encode every frame of ``cache``; returns the memory map of the written ``latents/<name>``."""
    textures, blend = cache.array(TEXTURES), cache.require_finite(BLEND_WEIGHTS)
    if textures.shape[1] != model.hparams.texture_size or blend.shape[1] != model.hparams.num_blend_shapes:
        raise CacheError(
            f"{cache.root}: textures {textures.shape[1]}^2 with {blend.shape[1]} blend shapes, but the "
            f"model was trained on {model.hparams.texture_size}^2 with {model.hparams.num_blend_shapes}"
        )
    n, latent_dim = cache.num_frames, model.hparams.latent_dim
    task = progress.add_task(f"encode {name}", total=n) if progress else None
    with cache.array_writer(latent_array(name), (n, latent_dim), np.float32, stage=STAGE, per_frame=True) as out:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            texture = torch.from_numpy(np.array(textures[start:stop])).permute(0, 3, 1, 2).float() / 255
            out[start:stop] = model.encode(texture, torch.from_numpy(np.array(blend[start:stop]))).numpy()
            if progress:
                progress.update(task, completed=stop)
    return cache.array(latent_array(name))


def record_latent_source(cache: CaptureCache, name: str, checkpoint: str | Path,
                         model: torch.nn.Module | None = None) -> None:
    """Remember which head VAE wrote ``latents/<name>`` (its file and its weights' fingerprint), so the animator's
    scoring decodes with the same one and ``export`` refuses another."""
    model = model if model is not None else load_head_vae(checkpoint)
    cache.reload()
    recorded = dict(cache.manifest.meta.get("latents", {}))
    recorded[name] = {"checkpoint": str(Path(checkpoint).resolve()), "weights_sha256": weights_fingerprint(model)}
    cache.set_meta(latents=recorded)

