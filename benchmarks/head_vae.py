"""Head VAE speed on this machine: training iterations/s and encode frames/s at a given texture size.

    python benchmarks/head_vae.py [--texture-size 128] [--steps 20] [--json benchmarks/results/head_vae.json]

Trains the real ``HeadVAE`` through a Lightning Trainer on a temporary cache of random textures (data loading
included) and times each batch after a warm-up. The baseline row is the VAE alone as it trained before issue 14
(NCHW memory, float32); then the VAE alone in channels-last (today's default) and with Lightning's
``--trainer.precision=bf16-mixed``; the VAE-GAN rows add the PatchGAN's passes. Measure on an idle machine: on
2 vCPUs another busy process stalls torch's threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from avatar_lightning.avatar.latents import encode_cache
from avatar_lightning.cache import CaptureCache, SequenceRecord
from avatar_lightning.models.head_vae import HeadVAE
from datamodules import HeadDataModule


class BatchTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self._start = warmup, [], 0.0

    def on_train_batch_start(self, *args: object) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        self.times.append(time.perf_counter() - self._start)

    @property
    def seconds_per_step(self) -> float:
        return float(np.median(self.times[self.warmup:]))


def make_cache(root: Path, frames: int, size: int, blend_shapes: int = 17) -> CaptureCache:
    rng = np.random.default_rng(0)
    cache = CaptureCache.create(root, fps=25, num_frames=frames, sequences=[SequenceRecord("train", 0, frames - 1,
                                                                                           "train")])
    cache.write_array("tracking/textures", rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
                      stage="benchmark", per_frame=True)
    cache.write_array("tracking/blend_weights", rng.random((frames, blend_shapes), dtype=np.float32),
                      stage="benchmark", per_frame=True)
    return cache


def time_training(cache: CaptureCache, adversarial: bool, steps: int, batch_size: int, channels_last: bool = True,
                  precision: str = "32-true") -> float:
    model = HeadVAE(perceptual_weight=0.0, adversarial_weight=0.05 if adversarial else 0.0, adversarial_start=0,
                    channels_last=channels_last)
    timer = BatchTimer(warmup=2)
    trainer = pl.Trainer(max_steps=steps * (2 if adversarial else 1), accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=[timer], precision=precision)
    trainer.fit(model, datamodule=HeadDataModule(str(cache.root), batch_size=batch_size))
    return timer.seconds_per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texture-size", type=int, default=128, help="the small preset's texture size")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", default="benchmarks/results/head_vae.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = make_cache(Path(tmp) / "cache", frames=256, size=args.texture_size)
        base = time_training(cache, False, args.steps, args.batch_size, channels_last=False)
        last = time_training(cache, False, args.steps, args.batch_size)
        bf16 = time_training(cache, False, args.steps, args.batch_size, precision="bf16-mixed")
        gan = time_training(cache, True, args.steps, args.batch_size)
        gan_bf16 = time_training(cache, True, args.steps, args.batch_size, precision="bf16-mixed")
        model = HeadVAE(texture_size=args.texture_size, num_blend_shapes=17, perceptual_weight=0.0).eval()
        encode_cache(model, cache, "warmup", batch_size=64)
        start = time.perf_counter()
        encode_cache(model, cache, "bench", batch_size=64)
        encode_fps = cache.num_frames / (time.perf_counter() - start)
    rows.append({"what": "train VAE, NCHW fp32 (baseline)", "per_s": 1 / base, "unit": "it/s", "ratio": 1.0})
    rows.append({"what": "train VAE, channels-last", "per_s": 1 / last, "unit": "it/s", "ratio": base / last})
    rows.append({"what": "train VAE, channels-last bf16-mixed", "per_s": 1 / bf16, "unit": "it/s",
                 "ratio": base / bf16})
    rows.append({"what": "train VAE + PatchGAN", "per_s": 1 / gan, "unit": "it/s", "ratio": base / gan})
    rows.append({"what": "train VAE + PatchGAN, bf16-mixed", "per_s": 1 / gan_bf16, "unit": "it/s",
                 "ratio": base / gan_bf16})
    rows.append({"what": "encode (mu), batch 64", "per_s": encode_fps, "unit": "frames/s", "ratio": None})
    print(f"head VAE, texture {args.texture_size}^2, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""
        print(f"{r['what']:<38}{r['per_s']:>10.2f} {r['unit']:<9}{ratio:>8}")
    result = {"texture_size": args.texture_size, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
              "machine": platform.platform(), "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
