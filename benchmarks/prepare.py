"""``prepare`` measured: accuracy against the synthetic actor's truth, and speed on real 512^2 footage.

    python benchmarks/prepare.py [--seconds 24] [--json benchmarks/results/prepare.json] [--skip-speed]

Accuracy: a synthetic capture (256^2, 3 cameras, the default `small` look) is written to mp4 files and prepared
from those files alone, with 1 and 3 cameras, calibration given (the synthetic rig, via a calibration file) and
estimated; each result is scored against the truth (``capture.evaluate``). The issue's goals: median head-rotation
error <= 2 deg, median landmark reprojection error <= 1.5 % of the face height, Pearson correlation >= 0.8 for
jaw open, blinks, smile and brows; texture PSNR over the visible area is reported (the frames are shaded, the
truth texture is albedo, so it has a floor).

Speed: the real monocular capture ``../shared/data/capture/anchor_71s.mp4`` (512^2, 1779 frames), prepared whole;
frames/s per camera per phase, with the decode + FaceMesh phase as the named baseline (the issue: FaceMesh ~6 ms
a frame, nothing else may dominate; goal >= 20 frames/s for the whole stage). Peak memory: anonymous RSS
(excluding the written memory maps' file pages, which the kernel can drop) and ru_maxrss (including them).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch
from _timing import PhaseTimer  # a sibling module: benchmarks run as `python benchmarks/X.py`

from avatar_lightning.capture.calibration import save_calibration
from avatar_lightning.capture.evaluate import KEY_SHAPES, export_videos, score_prepared
from avatar_lightning.capture.prepare import PrepareOptions, prepare_capture
from avatar_lightning.synth.generate import SynthPreset, generate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "capture"


def accuracy(tmp: Path, seconds: float) -> list[dict]:
    preset = SynthPreset(256, 256, 128, 25.0, (seconds - 8.0,), 2.0, 6.0, 4.0, supersampling=1)
    truth = generate(tmp / "truth", preset=preset, seed=0, previews=False)
    videos = [str(v) for v in export_videos(truth, tmp / "videos")]
    rows = []
    for cameras in (1, 3):
        for given in (True, False):
            options = PrepareOptions(test_seconds=6.0, val_seconds=2.0)
            if given:
                path = save_calibration(truth.cameras[:cameras], tmp / f"calibration_{cameras}.json")
                options = PrepareOptions(**{**options.__dict__, "calibration": str(path)})
            start = time.perf_counter()
            cache = prepare_capture(videos[:cameras], tmp / f"prepared_{cameras}_{given}", options)
            elapsed = time.perf_counter() - start
            scores = score_prepared(cache, truth)
            rows.append({"cameras": cameras, "calibration": "given" if given else "estimated", "seconds": elapsed,
                         **scores})
    return rows


def _anon_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def speed(tmp: Path, video: Path) -> dict:
    timer = PhaseTimer()
    peak = {"anon_mb": 0.0}

    def progress(what: str, done: int, total: int) -> None:
        timer(what, done, total)
        peak["anon_mb"] = max(peak["anon_mb"], _anon_rss_mb())

    start = timer.last = time.perf_counter()
    cache = prepare_capture([str(video)], tmp / video.stem, PrepareOptions(), progress)
    total = time.perf_counter() - start
    frames = cache.num_frames
    rows = timer.rows(total, "other (template, focal search, clean plate, report)")
    baseline = timer.phases["decode + FaceMesh"]["seconds"]
    fit = cache.manifest.meta["prepare"]["fit"]["cameras"]["cam0"]
    return {"video": str(video), "frames": frames, "size": [cache.cameras[0].width, cache.cameras[0].height],
            "total_seconds": total, "frames_per_s": frames / total, "baseline": "decode + FaceMesh",
            "total_over_baseline": total / baseline, "phases": rows, "peak_anon_rss_mb": peak["anon_mb"],
            "peak_rss_mb_incl_file_pages": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "median_reprojection_of_face_height": fit["median_reprojection_of_face_height"]}


def _first_seconds(video: Path, seconds: float, tmp: Path) -> Path:
    import itertools

    from avatar_lightning.video import iter_frames, probe_video, write_video

    fps = probe_video(video).fps
    frames = itertools.islice(iter_frames(video), int(seconds * fps))
    return write_video(tmp / f"{video.stem}_first_{seconds:g}s.mp4", frames, fps)


def print_tables(rows: list[dict], timing: dict) -> None:
    print(f"prepare, {platform.node()} ({torch.get_num_threads()} threads)")
    print("\naccuracy against the synthetic truth (goals: rot <= 2 deg, reproj <= 1.5 %, key shapes r >= 0.8)")
    header = f"{'cams':>4} {'calibration':<10}{'rot med':>8}{'rot p95':>8}{'reproj %':>9}{'PSNR':>6}"
    print(header + "".join(f"{name[:9]:>10}" for name in KEY_SHAPES))
    for r in rows:
        line = (f"{r['cameras']:>4} {r['calibration']:<10}{r['median_rotation_error_deg']:>8.2f}"
                f"{r['p95_rotation_error_deg']:>8.2f}{100 * r['median_reprojection_of_face_height']:>9.2f}"
                f"{r['texture_psnr_db']:>6.1f}")
        print(line + "".join(f"{(r['blend_correlation'][n] or 0):>10.2f}" for n in KEY_SHAPES))
    if "skipped" in timing:
        print(f"\nspeed: skipped ({timing['skipped']})")
        return
    print(f"\nspeed on {timing['video']} ({timing['frames']} frames, {timing['size'][0]}x{timing['size'][1]})")
    print(f"{'phase':<52}{'seconds':>9}{'frames/s':>10}")
    for r in timing["phases"]:
        print(f"{r['phase']:<52}{r['seconds']:>9.1f}{r['frames_per_s']:>10.1f}")
    print(f"{'total':<52}{timing['total_seconds']:>9.1f}{timing['frames_per_s']:>10.1f}"
          f"   ({timing['total_over_baseline']:.2f}x the decode + FaceMesh baseline)")
    print(f"peak anonymous RSS {timing['peak_anon_rss_mb']:.0f} MB; with file pages "
          f"{timing['peak_rss_mb_incl_file_pages']:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=24.0, help="length of the synthetic capture")
    parser.add_argument("--json", default="benchmarks/results/prepare.json")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = accuracy(Path(tmp) / "synthetic", args.seconds)
        video = SHARED / "anchor_71s.mp4"
        if args.skip_speed or not video.is_file():
            timing, cut = {"skipped": "--skip-speed" if args.skip_speed else f"{video} is absent"}, None
        else:
            # Memory vs length: the first 20 s first (freed memory may stay with the process), then all of it.
            cut = speed(Path(tmp) / "real", _first_seconds(video, 20.0, Path(tmp)))
            timing = speed(Path(tmp) / "real", video)
    print_tables(rows, timing)
    if cut is not None:
        print(f"memory vs length: peak anonymous RSS {cut['peak_anon_rss_mb']:.0f} MB for the first 20 s "
              f"({cut['frames']} frames), {timing['peak_anon_rss_mb']:.0f} MB for all {timing['frames']}")
    result = {"machine": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(),
              "accuracy": rows, "speed": timing, "speed_first_20_s": cut}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
