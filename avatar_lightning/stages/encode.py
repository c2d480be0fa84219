"""``python -m avatar_lightning encode``: every frame's latent z from a trained head VAE (:mod:`avatar.latents`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.progress import Progress

from avatar_lightning.avatar.latents import encode_cache, record_latent_source
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.models.head_vae import load_head_vae


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
