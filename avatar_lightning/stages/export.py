"""``python -m avatar_lightning export``: pack a trained avatar into one folder that ``animate`` loads anywhere."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from avatar_lightning.avatar.folder import export_avatar, load_avatar
from avatar_lightning.cache.store import CaptureCache


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning export",
        description="Write an avatar folder: the head VAE, re-render U-Net and animator checkpoints, the head "
                    "template, cameras, clean plates and the feature settings (see avatar_lightning/avatar.py).",
    )
    parser.add_argument("--cache", required=True, help="the actor's capture cache the models were trained on")
    parser.add_argument("--head-vae", required=True, help="HeadVAE checkpoint (fit --config experiments/head_vae.yaml)")
    parser.add_argument("--rerender", required=True,
                        help="Rerenderer checkpoint (fit --config experiments/rerender.yaml)")
    parser.add_argument("--animator", required=True, help="Animator checkpoint (fit --config experiments/<cell>.yaml)")
    parser.add_argument("--out", required=True, help="the avatar folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = parser.parse_args(argv)
    out = export_avatar(CaptureCache(args.cache), args.out, args.head_vae, args.rerender, args.animator,
                        overwrite=args.overwrite)
    avatar = load_avatar(out)  # what was written loads: the check a user would do next
    print(f"wrote avatar {out}: features {avatar.features!r} ({avatar.extractor}, relative {avatar.relative}), "
          f"cameras {[c.name for c in avatar.cameras]}")
    return 0
