"""``python -m avatar_lightning render-mesh``: I_orig of every frame and camera (:mod:`avatar.mesh_renders`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.progress import Progress

from avatar_lightning.avatar.mesh_renders import render_cache
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.models.head_vae import load_head_vae


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning render-mesh",
        description="Render the textured head model (I_orig) for every frame and camera into the cache.",
    )
    parser.add_argument("--ckpt", help="HeadVAE checkpoint (needed for --textures vae and latents)")
    parser.add_argument("--cache", required=True, help="capture cache folder")
    parser.add_argument("--name", default="head_vae", help="run name: writes renders/<name>/<camera>.npy")
    parser.add_argument("--textures", choices=["vae", "tracking", "latents"], default="vae",
                        help="vae: the head VAE's reconstruction of each tracked texture (default); tracking: the "
                             "tracked textures as they are; latents: decode latents/<--latents>")
    parser.add_argument("--latents", help="latents run to decode with --textures latents")
    parser.add_argument("--camera", action="append", help="render only this camera (repeatable; default all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    cache = CaptureCache(args.cache)
    model = None
    if args.ckpt:
        model = load_head_vae(args.ckpt)
    with Progress() as progress:
        names = render_cache(cache, args.name, args.textures, model, args.latents, args.camera, args.batch_size,
                             args.device, progress)
    print(f"wrote {', '.join(names)} to {cache.root}")
    return 0
