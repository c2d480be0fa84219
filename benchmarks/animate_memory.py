"""Memory of ``animate`` against the driving video's length: peak RSS must stay flat (streamed decode, chunked write).

    python benchmarks/animate_memory.py                    # 1, 2 and 4 minutes of 1080p (~20 min on 2 cores)
    python benchmarks/animate_memory.py --minutes 0.25 0.5 # a quick look
    python benchmarks/animate_memory.py --json benchmarks/results/animate_memory.json

Each length runs the real command, ``python -m avatar_lightning animate --side-by-side --pose driving`` (both
read the ingested frames back), in a fresh process; this script samples ``/proc`` every 0.2 s for that process and
its children and records the peak of their summed resident memory, split into anonymous memory (the heap: models,
buffers, anything held per frame) and file-backed pages (the memory-mapped cache arrays and libraries; the kernel
reclaims these under pressure, but they count in RSS). Baseline: the shortest length measured in the same run;
"flat" means the peak grows by far less than the video does.

The driving video: a real face (``../shared/data/driving/d10.mp4``, 512^2, or ``--face``) scaled to 1080 px high,
centred on a 1920x1080 grey frame, played forwards and backwards until the length is reached, encoded H.264. The
avatar: the built-in synthetic actor's ``tiny`` preset with random-weight networks (``testing.make_avatar``; memory,
not quality; its rendering is small, so the run is dominated by decoding, FaceMesh and the cache, the parts that
scale with length).
The work folder's size on disk (the ingested driving cache) is recorded too: it does grow with length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FACE = ROOT.parent / "shared" / "data" / "driving" / "d10.mp4"
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def write_driving(face: Path, out: Path, minutes: float, width: int, height: int) -> tuple[int, float]:
    """The face clip scaled to ``height``, centred on a ``width`` x ``height`` frame, ping-ponged to ``minutes``."""
    from avatar_lightning.video import VideoWriter, iter_frames, probe_video

    fps = probe_video(face).fps
    clip = []
    for frame in iter_frames(face):
        side = round(frame.shape[1] * height / frame.shape[0])
        canvas = np.full((height, width, 3), 128, np.uint8)
        left = (width - side) // 2
        canvas[:, left : left + side] = cv2.resize(frame, (side, height), interpolation=cv2.INTER_LINEAR)
        clip.append(canvas)
    loop = clip + clip[-2:0:-1]
    total = round(minutes * 60 * fps)
    with VideoWriter(out, fps=fps) as writer:
        for start in range(0, total, 16):
            writer.write(np.stack([loop[i % len(loop)] for i in range(start, min(total, start + 16))]))
    return total, fps


def _tree(root: int) -> list[int]:
    """``root`` and its live descendants (read from /proc; no psutil in our dependencies)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def _rss_kib(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed + shared) resident KiB of ``pid``; zeros once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return 0, 0
    kib = {k: int(fields.get(k, "0 kB").split()[0]) for k in ("RssAnon", "RssFile", "RssShmem")}
    return kib["RssAnon"], kib["RssFile"] + kib["RssShmem"]


def run_sampled(command: list[str], period: float = 0.2) -> dict[str, float]:
    """Run ``command``; peak summed RSS of it and its children (MiB) and wall seconds."""
    peak = {"total": 0, "anon": 0, "file": 0}
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            usage = [_rss_kib(pid) for pid in _tree(process.pid)]
            anon, file = sum(u[0] for u in usage), sum(u[1] for u in usage)
            peak["total"], peak["anon"] = max(peak["total"], anon + file), max(peak["anon"], anon)
            peak["file"] = max(peak["file"], file)
            done.wait(period)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{output[-3000:]}")
    return {"seconds": time.perf_counter() - start, **{f"peak_{k}_mib": v / 1024 for k, v in peak.items()},
            "output": output.strip().splitlines()[-1]}


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    from avatar_lightning.synth.generate import generate
    from avatar_lightning.testing import make_avatar

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--size", default="1920x1080", help="driving video size WxH")
    parser.add_argument("--face", type=Path, default=DEFAULT_FACE, help="a short clip of a face to loop")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if not args.face.is_file():
        parser.error(f"{args.face}: no face clip; pass --face with a short video of a face")
    width, height = map(int, args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="animate-memory-") as temporary:
        work = Path(temporary)
        avatar = make_avatar(work, generate(work / "synthetic", preset="tiny", seed=0).root)
        for minutes in sorted(args.minutes):
            video = work / f"driving_{minutes:g}min.mp4"
            frames, fps = write_driving(args.face, video, minutes, width, height)
            run = work / f"run_{minutes:g}"
            command = [sys.executable, "-m", "avatar_lightning", "animate", "--driving", str(video), "--avatar",
                       str(avatar), "--out", str(run / "out.mp4"), "--work", str(run / "work"), "--side-by-side",
                       "--pose", "driving", "--no-progress"]
            measured = run_sampled(command)
            rows.append({"minutes": minutes, "frames": frames, "fps": fps,
                         "driving_video_mib": video.stat().st_size / 2**20,
                         "work_folder_mib": folder_mib(run / "work"), **measured})
            video.unlink()
            print(f"{minutes:g} min: {measured['output']}", flush=True)
    base = rows[0]
    print(f"\nanimate --side-by-side --pose driving, {width}x{height} driving video, on {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}); baseline: the {base['minutes']:g} min run")
    print("| minutes | frames | peak RSS MiB | x baseline | anon MiB | file-backed MiB | work folder MiB | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['minutes']:g} | {r['frames']} | {r['peak_total_mib']:.0f} | "
              f"{r['peak_total_mib'] / base['peak_total_mib']:.2f} | {r['peak_anon_mib']:.0f} | "
              f"{r['peak_file_mib']:.0f} | {r['work_folder_mib']:.0f} | {r['seconds']:.0f} |")
    if args.json:
        meta = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(), "torch": torch.__version__, "driving_size": [width, height],
                "face": str(args.face.name), "load_average": os.getloadavg()[0], "baseline": "shortest run"}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
