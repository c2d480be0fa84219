"""``python -m avatar_lightning encode``: every frame's latent z (posterior mean) from a trained head VAE.

Writes ``latents/<name>.npy (N, Z)`` into the cache atomically: the animator's training target. Frames are read
and encoded in chunks, so memory stays flat in the capture's length.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.checkpoints import load_model, weights_fingerprint
from avatar_lightning.errors import CacheError
from datamodules.head import BLEND_WEIGHTS, TEXTURES

STAGE = "encode"


def load_head_vae(checkpoint: str | Path) -> torch.nn.Module:
    """A trained :class:`HeadVAE` in eval mode on the CPU; a clear error for a missing or foreign file."""
    from avatar_lightning.models.head_vae import HeadVAE

    return load_model(HeadVAE, checkpoint,
                      hint="train one with `python -m avatar_lightning fit --config experiments/head_vae.yaml`")


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
    with cache.array_writer(f"latents/{name}", (n, latent_dim), np.float32, stage=STAGE, per_frame=True) as out:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            texture = torch.from_numpy(np.array(textures[start:stop])).permute(0, 3, 1, 2).float() / 255
            out[start:stop] = model.encode(texture, torch.from_numpy(np.array(blend[start:stop]))).numpy()
            if progress:
                progress.update(task, completed=stop)
    return cache.array(f"latents/{name}")


def record_latent_source(cache: CaptureCache, name: str, checkpoint: str | Path,
                         model: torch.nn.Module | None = None) -> None:
    """Remember which head VAE wrote ``latents/<name>`` (its file and its weights' fingerprint), so the animator's
    scoring decodes with the same one and ``export`` refuses another."""
    model = model if model is not None else load_head_vae(checkpoint)
    cache.reload()
    recorded = dict(cache.manifest.meta.get("latents", {}))
    recorded[name] = {"checkpoint": str(Path(checkpoint).resolve()), "weights_sha256": weights_fingerprint(model)}
    cache.set_meta(latents=recorded)


def latent_source(cache: CaptureCache, name: str) -> Path | None:
    """The head VAE checkpoint :func:`record_latent_source` noted for ``latents/<name>``, if any."""
    entry = cache.manifest.meta.get("latents", {}).get(name)
    return Path(entry["checkpoint"]) if entry and entry.get("checkpoint") else None


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning encode", description="Write every frame's head-VAE latent z into the cache."
    )
    parser.add_argument(
        "--ckpt", required=True, help="HeadVAE checkpoint (from fit --config experiments/head_vae.yaml)"
    )
    parser.add_argument("--cache", required=True, help="capture cache folder")
    parser.add_argument("--name", default="head_vae", help="run name: writes latents/<name>.npy (default head_vae)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    cache = CaptureCache(args.cache)
    model = load_head_vae(args.ckpt)
    with Progress() as progress:
        latents = encode_cache(model, cache, args.name, args.batch_size, progress)
    record_latent_source(cache, args.name, args.ckpt, model)
    print(f"wrote latents/{args.name} {list(latents.shape)} to {cache.root}")
    return 0
