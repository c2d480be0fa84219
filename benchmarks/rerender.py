"""Re-render U-Net throughput (paper §4 claims real time): frames/s of U-Net + equation 1 at 256² and 512².

    python benchmarks/rerender.py               # CPU (and CUDA where present), batch 1 and 8
    python benchmarks/rerender.py --quick       # fewer repeats
    python benchmarks/rerender.py --json out.json   (default benchmarks/results/rerender.json)

The network is the one ``experiments/rerender.yaml`` trains (4 input channels, depth 5, width 32, group norm),
in eval mode without gradients; a frame is one forward pass plus ``compose`` (I_out). Frames/s are batch /
median seconds per call ("best": batch / the fastest call). Baseline in the same run: the mesh rendering
I_orig it refines (``render_textured`` of a ~1 k-triangle head-sized mesh at the same size, batch 1, torch
backend) — ``unet_over_mesh`` is U-Net seconds per frame over mesh-render seconds per frame, i.e. how many
times more the U-Net costs than the rasterization it post-processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _timing import timed  # a sibling module: benchmarks run as `python benchmarks/X.py`

from avatar_lightning.compose import compose
from avatar_lightning.nets.unet import UNet
from avatar_lightning.render import Cameras, RasterSettings, ellipsoid_mesh, get_rasterizer, render_textured

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "rerender.json"
NETWORK = {"in_channels": 4, "out_channels": 6, "depth": 5, "width": 32, "max_width": 256, "norm": "group"}


def mesh_frame(size: int, device: torch.device) -> Callable[[], object]:
    """One textured render of a head-sized mesh (~1 k triangles, like the template) that half fills the image."""
    mesh = ellipsoid_mesh(16, 32).to(device)
    cameras = Cameras.look_at([(0.0, 0.0, 0.45)], width=size, height=size, fov_degrees=30.0).to(device)
    texture = torch.rand(1, 128, 128, 3, device=device)
    vertices = mesh.vertices[None]
    settings = RasterSettings(backend="torch")
    rasterizer = get_rasterizer("torch", device)
    return lambda: render_textured(mesh, vertices, texture, cameras, settings, rasterizer)


def run(device: torch.device, sizes: list[int], batches: list[int], min_time: float, max_repeats: int) -> list[dict]:
    net = UNet(**NETWORK).to(device).eval()
    results = []
    for size in sizes:
        mesh_s, _ = timed(mesh_frame(size, device), device, min_time, max_repeats)
        for batch in batches:
            x = torch.rand(batch, 4, size, size, device=device)
            plate = torch.rand(1, 3, size, size, device=device)

            @torch.no_grad()
            def step(x: torch.Tensor = x, plate: torch.Tensor = plate) -> torch.Tensor:
                return compose(x[:, :3], net(x), plate).i_out

            median, best = timed(step, device, min_time, max_repeats)
            row = {"device": device.type, "resolution": size, "batch": batch, "unet_fps": batch / median,
                   "unet_fps_best": batch / best, "mesh_render_fps": 1 / mesh_s,
                   "unet_over_mesh": (median / batch) / mesh_s}
            results.append(row)
            print(f"{device.type:<5} {size:>4}² batch {batch:>2}: U-Net {row['unet_fps']:8.2f} frames/s "
                  f"(best {row['unet_fps_best']:8.2f}); mesh render {row['mesh_render_fps']:8.2f} frames/s; "
                  f"U-Net/mesh cost {row['unet_over_mesh']:6.1f}x", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    torch.manual_seed(0)
    min_time, max_repeats = (0.5, 5) if args.quick else (3.0, 30)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    meta = {
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "processor": platform.processor(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "network": NETWORK,
        "parameters": sum(p.numel() for p in UNet(**NETWORK).parameters()), "quick": args.quick,
        "unix_time": int(time.time()),
    }
    print(f"U-Net {NETWORK}, {meta['parameters']:,} parameters; {meta['cpus']} CPUs, torch {meta['torch']}, "
          f"{meta['threads']} threads, CUDA: {meta['cuda']}")
    results = [row for device in devices for row in run(device, [256, 512], [1, 8], min_time, max_repeats)]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
