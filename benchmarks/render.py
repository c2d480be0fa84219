"""Rendering throughput: frames/s of the rasterizer backends against a naive dense baseline.

    python benchmarks/render.py                 # full grid, CPU (and CUDA where present)
    python benchmarks/render.py --quick         # ~1 k triangles at 128² and 256² only, short timings
    python benchmarks/render.py --json out.json # where the results go (default benchmarks/results/render.json)

A frame is a textured render of a posed head-sized mesh (``render_textured``: rasterize, interpolate UVs,
bilinear texture lookup) from a camera the head half fills; "raster" times ``rasterize`` alone. Frames/s are
batch / median seconds per call ("best": batch / the fastest call). The naive
baseline (``reference.rasterize_dense``) tests every pixel against every triangle with the same arithmetic;
it is timed on a band of rows at batch 1 and scaled to a full frame (its cost per row is uniform and it
loops over images), and "speedup" is raster frames/s over naive frames/s.

Measure on an idle machine. On the project's 2-vCPU machines, while another process keeps a core busy,
OpenMP's default spin-waiting makes multi-threaded torch ops stall for a scheduler tick (~8 ms each), which
swamps what is measured; OMP_WAIT_POLICY=PASSIVE avoids the stalls but costs ~0.2 ms per op when idle.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
from _timing import timed  # a sibling module: benchmarks run as `python benchmarks/X.py`

from avatar_lightning.render import (
    Cameras,
    RasterSettings,
    ellipsoid_mesh,
    get_rasterizer,
    nvdiffrast_available,
    render_textured,
)
from avatar_lightning.render.reference import rasterize_dense

MESHES = {1_000: (16, 32), 10_000: (50, 100)}  # target triangles -> ellipsoid (rings, segments)
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "render.json"


def tune_malloc() -> bool:
    """Keep freed memory in glibc's heap instead of returning it (and page-faulting it back) per call."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 40))


def scene(triangles: int, size: int, batch: int, device: torch.device):
    rings, segments = MESHES[triangles]
    mesh = ellipsoid_mesh(rings, segments).to(device)
    g = torch.Generator().manual_seed(0)
    pose = torch.zeros(batch, 6)
    pose[:, :3] = (torch.rand(batch, 3, generator=g) - 0.5) * 0.6  # head turns of up to ~17 degrees
    verts = mesh.deform(pose=pose.to(device))
    cams = Cameras.look_at([[0.0, 0.0, -0.45]], width=size, height=size, fov_degrees=40).to(device)
    c = (torch.arange(256) + 0.5) / 256
    v, u = torch.meshgrid(c, c, indexing="ij")
    tex = torch.stack([u, v, 0.5 + 0.5 * torch.sin(12 * u) * torch.cos(9 * v)], -1)[None].to(device)
    return mesh, verts, cams, tex


def naive_fps(mesh, verts, cams, size: int, settings: RasterSettings, budget_pairs: float) -> float:
    """Frames/s of the dense baseline for one frame, timed on a band of rows holding ~budget_pairs tests."""
    pos = cams.to_clip(verts[:1], settings.near, settings.far)
    rows = max(1, min(size, int(budget_pairs / (size * mesh.num_triangles))))
    band = (size // 2 - rows // 2, size // 2 - rows // 2 + rows)  # through the head: no empty-row shortcut
    seconds, _ = timed(lambda: rasterize_dense(pos, mesh.triangles, (size, size), rows=band), pos.device, 0.0, 3)
    return 1.0 / (seconds * size / rows)


def run(args: argparse.Namespace) -> list[dict]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    triangles = args.triangles or ([1_000] if args.quick else [1_000, 10_000])
    sizes = args.sizes or ([128, 256] if args.quick else [128, 256, 512])
    batches = [1, 16]
    min_time = 0.5 if args.quick else 2.0
    rows: list[dict] = []
    for device in devices:
        backends = ["torch"] + (["nvdiffrast"] if device.type == "cuda" and nvdiffrast_available() else [])
        for n_tri in triangles:
            for size in sizes:
                naive = None
                for batch in batches:
                    mesh, verts, cams, tex = scene(n_tri, size, batch, device)
                    for backend in backends:
                        settings = RasterSettings(backend=backend)
                        r = get_rasterizer(backend, device)
                        pos = cams.to_clip(verts, settings.near, settings.far)
                        with torch.no_grad():
                            raster_s, _ = timed(
                                lambda r=r, pos=pos, mesh=mesh, size=size: r.rasterize(
                                    pos, mesh.triangles, (size, size)
                                ),
                                device,
                                min_time,
                                200,
                            )
                            render_s, render_best = timed(
                                lambda r=r, s=settings, mesh=mesh, verts=verts, tex=tex, cams=cams: render_textured(
                                    mesh, verts, tex, cams, s, r
                                ),
                                device,
                                min_time,
                                200,
                            )
                            if naive is None and backend == "torch":
                                naive = naive_fps(mesh, verts, cams, size, settings, 2e7 if args.quick else 6e7)
                        row = {
                            "backend": backend,
                            "device": device.type,
                            "triangles": mesh.num_triangles,
                            "resolution": size,
                            "batch": batch,
                            "render_fps": batch / render_s,
                            "render_fps_best": batch / render_best,
                            "raster_fps": batch / raster_s,
                            "naive_raster_fps": naive,
                            "speedup_vs_naive": (batch / raster_s) / naive if naive else None,
                        }
                        rows.append(row)
                        print_row(row, flush=True)
    return rows


HEADER = f"{'backend':<11}{'device':<7}{'triangles':>10}{'res':>6}{'batch':>6}{'render f/s':>12}{'(best)':>8}"
HEADER += f"{'raster f/s':>12}"
HEADER += f"{'naive f/s':>11}{'speedup':>9}"


def print_row(row: dict, flush: bool = False) -> None:
    naive = row["naive_raster_fps"]
    speed = row["speedup_vs_naive"]
    print(
        f"{row['backend']:<11}{row['device']:<7}{row['triangles']:>10}{row['resolution']:>5}²{row['batch']:>6}"
        f"{row['render_fps']:>12.1f}{row['render_fps_best']:>8.1f}{row['raster_fps']:>12.1f}"
        f"{(f'{naive:.2f}' if naive else '-'):>11}{(f'{speed:.0f}x' if speed else '-'):>9}",
        flush=flush,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~1 k triangles at 128² and 256², short timings")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even where present")
    parser.add_argument("--triangles", type=int, nargs="+", choices=sorted(MESHES), help="subset of meshes")
    parser.add_argument("--sizes", type=int, nargs="+", help="subset of square resolutions")
    parser.add_argument(
        "--tune-malloc",
        action="store_true",
        help="keep freed memory in glibc's heap (mallopt): less page-fault time on CPU, reported in the JSON",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = tune_malloc() if args.tune_malloc else False
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, malloc tuned: {tuned}"
    )
    print(HEADER)
    rows = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "quick": args.quick,
        "malloc_tuned": tuned,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "unix_time": math.floor(time.time()),
    }
    args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
