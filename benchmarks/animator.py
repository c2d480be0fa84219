"""Animator speed on this machine: the paper's training schedule, batched inference and streaming.

    python benchmarks/animator.py [--feature-dim 2048] [--steps 600] [--full] [--json benchmarks/results/animator.json]

Training runs the real ``Animator`` through a Lightning Trainer on a temporary cache of a 3-minute capture
(4 500 frames of random ``feature-dim`` features, 64-d latents), batch 32, windows of 8, and times every step
after a warm-up; the 15 000-step time is extrapolated from the median step (``--full`` runs all 15 000 steps of
the LSTM + residual cell instead). Data loading is timed alone over the same loader. The baseline of each training
row is the same network stepped in a bare PyTorch loop over pre-loaded batches, so the ratio is what Lightning,
logging and loading add. Each cell is trained with 2 intra-op threads (the process default on this machine:
the baseline) and with 1 (``callbacks.threads.IntraOpThreads``). Inference: a 750-frame sequence predicted with
stride-1 overlapping windows (frames/s), and the same through :class:`AnimatorStream` one frame at a time
(ms/frame), each against the previous implementation in the same run
(every window projected from the raw features again, window by window: ``baseline_*``), at 1 and 2 threads.
Measure on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from avatar_lightning.cache import CaptureCache, SequenceRecord
from avatar_lightning.models.animator import Animator
from callbacks.threads import IntraOpThreads
from datamodules.animator import AnimatorDataModule

sys.path.insert(0, str(Path(__file__).parent))
from _timing import timed  # noqa: E402

PAPER_STEPS = 15_000
# (backbone, residual_dim, layers): the grid's defaults, and a one-layer LSTM to show what depth costs.
CELLS = [("mlp", 16, 2), ("cnn", 16, 2), ("lstm", 0, 2), ("lstm", 16, 2), ("lstm", 16, 1)]


class StepTimer(pl.Callback):
    """Wall time of every training step (forward, backward, optimiser, logging: everything Lightning does)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: object) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        self.times.append(time.perf_counter() - self._start)


def make_cache(root: Path, frames: int, feature_dim: int, latent_dim: int = 64) -> CaptureCache:
    """A capture of four training sequences and a test one with random features and latents."""
    rng = np.random.default_rng(0)
    length = frames // 5
    sequences = [SequenceRecord(f"train_{i}", i * length, (i + 1) * length - 1, "train") for i in range(4)]
    sequences.append(SequenceRecord("test", 4 * length, 5 * length - 1, "test"))
    cache = CaptureCache.create(root, fps=25, num_frames=5 * length, sequences=sequences)
    n = cache.num_frames
    cache.write_array("features/bench", rng.standard_normal((n, feature_dim), dtype=np.float32), stage="benchmark",
                      per_frame=True)
    cache.write_array("features/bench.valid", np.ones(n, dtype=bool), stage="benchmark", per_frame=True)
    cache.write_array("latents/bench", rng.standard_normal((n, latent_dim), dtype=np.float32), stage="benchmark",
                      per_frame=True)
    return cache


def _model(data: AnimatorDataModule, backbone: str, residual: int, layers: int = 2) -> Animator:
    return Animator(features="bench", backbone=backbone, residual_dim=residual, layers=layers, test_after_fit=False,
                    feature_dim=data.feature_dim, latent_dim=data.latent_dim)


def train_lightning(data: AnimatorDataModule, backbone: str, residual: int, layers: int, steps: int,
                    threads: int) -> list[float]:
    model, timer = _model(data, backbone, residual, layers), StepTimer()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                         callbacks=[timer, IntraOpThreads(threads)])
    trainer.fit(model, datamodule=data)
    return timer.times


def train_bare(data: AnimatorDataModule, backbone: str, residual: int, layers: int, steps: int) -> float:
    """Median seconds per step of the same network and optimiser without Lightning or loading."""
    model = _model(data, backbone, residual, layers)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=1e-4)
    batches = [b for _, b in zip(range(16), data.train_dataloader(), strict=False)]
    times = []
    for i in range(steps):
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        loss = ((model(batch["x"], batch["z"] if residual else None) - batch["z"]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[5:])


def loading_seconds(data: AnimatorDataModule, batches: int) -> float:
    """Median seconds to produce one training batch from the cache, nothing else running."""
    times = []
    iterator = iter(data.train_dataloader())
    for _ in range(batches):
        start = time.perf_counter()
        try:
            next(iterator)
        except StopIteration:
            iterator = iter(data.train_dataloader())
            next(iterator)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def baseline_predict(model: Animator, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The previous ``predict_sequence``: every window run through ``forward`` from its raw features."""
    window = model.window
    starts = torch.arange(len(x) - window + 1)
    total, count = x.new_zeros(len(x), model.hparams.latent_dim), x.new_zeros(len(x), 1)
    for i in range(0, len(starts), chunk):
        frames = starts[i : i + chunk, None] + torch.arange(window)
        y = model(x[frames])
        total.index_add_(0, frames.reshape(-1), y.reshape(-1, y.shape[-1]))
        count.index_add_(0, frames.reshape(-1), torch.ones(frames.numel(), 1))
    return total / count


@torch.no_grad()
def baseline_stream(model: Animator, x: torch.Tensor) -> None:
    """The previous stream's work per frame: the last window of raw features through ``forward``."""
    for t in range(model.window, len(x)):
        model(x[None, t - model.window : t])


def inference(data: AnimatorDataModule, frames: int, threads: int) -> dict[str, float]:
    """Frames/s of a stride-1 sequence prediction and ms/frame of streaming (LSTM + residual), and the baselines."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = _model(data, "lstm", 16).eval()
        x = torch.randn(frames, data.feature_dim)
        torch.testing.assert_close(model.predict_sequence(x), baseline_predict(model, x), rtol=1e-4, atol=1e-5)
        cpu = torch.device("cpu")
        seconds, _ = timed(lambda: model.predict_sequence(x), cpu, min_time=2.0, max_repeats=10)
        baseline_seconds, _ = timed(lambda: baseline_predict(model, x), cpu, min_time=2.0, max_repeats=10)

        def stream() -> None:
            s = model.stream()
            for t in range(200 + model.window):
                s.push(x[t])

        stream_seconds, _ = timed(stream, cpu, min_time=2.0, max_repeats=10)
        baseline_stream_seconds, _ = timed(lambda: baseline_stream(model, x[: 200 + model.window]), cpu,
                                           min_time=2.0, max_repeats=10)
    finally:
        torch.set_num_threads(previous)
    return {"threads": threads, "frames_per_s": frames / seconds, "baseline_frames_per_s": frames / baseline_seconds,
            "streaming_ms_per_frame": stream_seconds / 200 * 1e3,
            "baseline_streaming_ms_per_frame": baseline_stream_seconds / 200 * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feature-dim", type=int, default=2048, help="DECA's ResNet-50 output: the paper's x")
    parser.add_argument("--frames", type=int, default=4500, help="a 3-minute capture at 25 fps")
    parser.add_argument("--steps", type=int, default=600, help="timed Lightning steps per training row")
    parser.add_argument("--full", action="store_true", help="also run all 15 000 steps of the LSTM + residual cell")
    parser.add_argument("--json", default="benchmarks/results/animator.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    pl.seed_everything(0, verbose=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = make_cache(Path(tmp) / "cache", args.frames, args.feature_dim)
        data = AnimatorDataModule(str(cache.root), features="bench", latents="bench")
        data.setup("fit")
        load = loading_seconds(data, 200)
        for backbone, residual, layers in CELLS:
            for threads in (2, 1):
                step_times = train_lightning(data, backbone, residual, layers, args.steps, threads)
                step = statistics.median(step_times[20:])
                bare = train_bare(data, backbone, residual, layers, 100)
                rows.append({
                    "what": f"train {backbone}x{layers}{' + residual' if residual else ''}", "threads": threads,
                    "it_per_s": 1 / step, "bare_it_per_s": 1 / bare, "lightning_over_bare": step / bare,
                    "loading_share": load / (step + load), "minutes_for_15000": PAPER_STEPS * (step + load) / 60,
                })
        full_minutes = None
        if args.full:
            start = time.perf_counter()
            train_lightning(data, "lstm", 16, 2, PAPER_STEPS, 1)
            full_minutes = (time.perf_counter() - start) / 60
        data.setup("test")
        inference_rows = [inference(data, 750, threads) for threads in (2, 1)]
    print(f"animator, {args.feature_dim}-d features, batch 32 x 8 frames, {platform.processor() or platform.machine()}"
          "; bare: the same step in a bare PyTorch loop (2 threads: the process default; 1: IntraOpThreads)")
    print(f"{'(x layers)':<22}{'threads':>8}{'it/s':>8}{'bare it/s':>11}{'ratio':>8}{'loading':>9}{'15k steps':>11}")
    for r in rows:
        print(f"{r['what']:<22}{r['threads']:>8}{r['it_per_s']:>8.1f}{r['bare_it_per_s']:>11.1f}"
              f"{r['lightning_over_bare']:>7.2f}x{r['loading_share']:>8.1%}{r['minutes_for_15000']:>8.1f} min")
    if full_minutes is not None:
        print(f"measured: 15 000 steps of lstm + residual through Lightning, 1 thread, in {full_minutes:.1f} min")
    for r in inference_rows:
        print(f"inference (lstm + residual), {r['threads']} threads: {r['frames_per_s']:.0f} frames/s batched (750 "
              f"frames, stride-1 windows; previous {r['baseline_frames_per_s']:.0f}, "
              f"{r['frames_per_s'] / r['baseline_frames_per_s']:.2f}x); streaming {r['streaming_ms_per_frame']:.3f} "
              f"ms/frame (previous {r['baseline_streaming_ms_per_frame']:.3f})")
    best = max(inference_rows, key=lambda r: r["frames_per_s"])
    result = {"feature_dim": args.feature_dim, "frames": args.frames, "machine": platform.platform(),
              "processor": platform.processor(), "training": rows, "full_15000_minutes": full_minutes,
              "inference": inference_rows, "inference_frames_per_s": best["frames_per_s"],
              "streaming_ms_per_frame": min(r["streaming_ms_per_frame"] for r in inference_rows)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
