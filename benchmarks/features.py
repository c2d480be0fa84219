"""Feature extraction speed on this machine: driving-video ingest, MediaPipe landmarks, DECA's encoder.

    python benchmarks/features.py                 # full timings
    python benchmarks/features.py --quick         # fewer frames and repeats (about a minute on 2 CPU cores)
    python benchmarks/features.py --video d3.mp4  # a real clip instead of the generated one

The source is a 512 x 512 clip of scikit-image's astronaut turning and drifting (a real face; generated, so
nothing is downloaded), or ``--video``. Rows: ``ingest`` (decode, validate, write the cache; with ``--crop``
also FaceMesh and the smoothed crop), the ``features`` stage with ``mediapipe`` end to end (Lightning predict
and the cache writer included) and the extractor alone, DECA's encoder alone on 224 x 224 crops at batch 1
and 32 (random weights: speed does not depend on them) on the CPU and on CUDA where present, and the whole
``deca`` extractor (crop + encoder). Frames/s = frames / seconds (median over repeats for the encoder).
Results go to ``benchmarks/results/features.json``. Measure on an idle machine: on 2 vCPUs another busy
process stalls torch's threads (OpenMP spin-waits); there, ``OMP_WAIT_POLICY=PASSIVE`` (set before Python
starts) gives a fair number: the ResNet-50 at batch 1 went from ~0.56 s to ~0.14 s per frame under load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from avatar_lightning.cache import CaptureCache
from avatar_lightning.capture.ingest import ingest_video
from avatar_lightning.features.deca import DecaEncoder, DecaFeatures
from avatar_lightning.features.mediapipe_landmarks import MediaPipeLandmarks
from avatar_lightning.features.run import extract_features
from avatar_lightning.video import write_video

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "features.json"


def source_clip(path: Path, frames: int, size: int = 512) -> Path:
    """The astronaut photo turning (+-10 degrees) and drifting, ``frames`` long, as an H.264 mp4."""
    from skimage import data

    image = data.astronaut()
    t = np.linspace(0, 2 * np.pi, frames)
    clip = []
    for s in t:
        matrix = cv2.getRotationMatrix2D((256, 160), 10 * np.sin(s), 1.0 + 0.05 * np.cos(s))
        matrix[:, 2] += (12 * np.sin(s), 6 * np.cos(s))
        moved = cv2.warpAffine(image, matrix, (512, 512), borderMode=cv2.BORDER_REFLECT)
        clip.append(cv2.resize(moved, (size, size), interpolation=cv2.INTER_AREA))
    return write_video(path, np.stack(clip), fps=25.0)


def seconds(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Median seconds per call."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(what: str, device: str, batch: int | None, frames: int, elapsed: float) -> dict:
    result = {"what": what, "device": device, "batch": batch, "frames": frames, "seconds": elapsed,
              "frames_per_s": frames / elapsed}
    print(f"{what:<46}{device:<7}{batch if batch else '-':>6}{frames:>8}{result['frames_per_s']:>12.1f}", flush=True)
    return result


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(args: argparse.Namespace, tmp: Path) -> list[dict]:
    rows: list[dict] = []
    n = 48 if args.quick else 200
    video = Path(args.video) if args.video else source_clip(tmp / "clip.mp4", n)
    cache_dir = tmp / "cache"
    elapsed = timed(lambda: ingest_video(video, cache_dir))
    cache = CaptureCache(cache_dir)
    n = cache.num_frames
    size = f"{cache.camera('video').width}x{cache.camera('video').height}"
    rows.append(row(f"ingest {size} (decode + write)", "cpu", None, n, elapsed))
    rows.append(row("ingest --crop --size 224 (+ FaceMesh)", "cpu", None, n,
                    timed(lambda: ingest_video(video, tmp / "cropped", crop=True, size=224))))
    rows.append(row(f"features mediapipe {size} (stage, predict)", "cpu", 16, n,
                    timed(lambda: extract_features(str(cache_dir), "mediapipe", progress=False))))
    clip = cache.read("cameras/video/frames")
    extractor = MediaPipeLandmarks(fps=cache.fps)
    rows.append(row(f"mediapipe extractor alone {size}", "cpu", 16, n,
                    timed(lambda: [extractor.extract(clip[i : i + 16]) for i in range(0, n, 16)])))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    encoder = DecaEncoder().eval()
    for device in devices:
        encoder.to(device)
        for batch in (1, 32):
            images = torch.rand(batch, 3, 224, 224, device=device)
            cpu = device.type == "cpu"
            repeats = (3 if batch == 1 else 1) if args.quick and cpu else (10 if cpu else 50)
            warmup = 0 if (cpu and batch == 32 and args.quick) else (1 if cpu else 5)
            with torch.inference_mode():
                per_call = seconds(lambda images=images: encoder(images), repeats, warmup, device)
            rows.append(row("DECA encoder 224 (ResNet-50 + MLP)", device.type, batch, batch, per_call))
    if not args.quick:
        deca = DecaFeatures(encoder=encoder.to(devices[-1]), fps=cache.fps)
        count = min(n, 64)
        with torch.inference_mode():
            rows.append(row(f"deca extractor (crop + encoder) {size}", devices[-1].type, 16, count,
                            timed(lambda: [deca.extract(clip[i : i + 16]) for i in range(0, count, 16)])))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48 frames, few encoder repeats")
    parser.add_argument("--video", help="a driving video to time instead of the generated clip")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(f"{'what':<46}{'device':<7}{'batch':>6}{'frames':>8}{'frames/s':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(args, Path(tmp))
    meta = {
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "quick": args.quick,
        "video": args.video or "generated 512x512 astronaut clip",
        "load_average": os.getloadavg()[0],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
