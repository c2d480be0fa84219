"""The neural path against the machine's peak: GFLOP per frame, achieved GFLOP/s and its share of the peak.

    python benchmarks/networks.py            # CPU (and CUDA where present)
    python benchmarks/networks.py --quick    # fewer repeats
    python benchmarks/networks.py --json benchmarks/results/networks.json

The peak is measured in the same run, as the best of two kernels: a large matmul (2048^3) and a 3x3
convolution (64 -> 64 channels, 128^2, batch 8, channels-last), each in float32 and, where the device computes
bf16 natively, in bfloat16. Rows (FLOPs counted by ``torch.utils.flop_counter``, a multiply-add = 2):

- the re-render U-Net at 256^2 in chunks of 16 (``animate``'s): the previous default (plain depth-5 U-Net, NCHW:
  the **baseline** every U-Net row is a ratio against), the same in channels-last, and the network
  ``experiments/rerender.yaml`` trains now in float32 and bf16 (``animate --precision auto``'s choice here);
- the head VAE of ``experiments/head_vae.yaml`` (128^2 textures): decode (animation) in float32 and bf16, and a
  training step (forward, backward, Adam; batch 16, VAE alone) in NCHW (baseline) and channels-last.

Weights are random: speed does not depend on them. Measure on an idle machine (the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _timing import experiment, rerender_network, timed  # a sibling module: benchmarks run as `python benchmarks/X.py`
from torch.utils.flop_counter import FlopCounterMode

from avatar_lightning.avatar.precision import autocast, native_bf16
from avatar_lightning.nets.head_vae import HeadVAENet
from avatar_lightning.nets.unet import UNet

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "benchmarks" / "results" / "networks.json"
SIZE, CHUNK, VAE_BATCH = 256, 16, 16
BASELINE_UNET = {"in_channels": 4, "out_channels": 6, "depth": 5, "width": 32, "max_width": 256, "norm": "group",
                 "unshuffle": 1}


def default_unet() -> dict[str, Any]:
    """The U-Net ``experiments/rerender.yaml`` trains (6 outputs: I_corr and three weight logits)."""
    return {**rerender_network(), "out_channels": 6}


def default_vae() -> dict[str, Any]:
    args = experiment("head_vae")["model"]["init_args"]
    return {"texture_size": 128, "num_blend_shapes": 17, "latent_dim": args["latent_dim"], "width": args["width"]}


def gflop(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def peaks(device: torch.device, min_time: float, max_repeats: int) -> dict[str, float]:
    """GFLOP/s of a large matmul and of a 3x3 convolution, float32 and (where native) bfloat16."""
    a = torch.rand(2048, 2048, device=device)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(device, memory_format=torch.channels_last).eval()
    x = torch.rand(8, 64, 128, 128, device=device).contiguous(memory_format=torch.channels_last)
    kernels = {"matmul": (lambda: a @ a, 2 * 2048**3 / 1e9), "conv3x3": (lambda: conv(x), gflop(lambda: conv(x)))}
    precisions = ["32", "bf16"] if native_bf16(device) else ["32"]
    result = {}
    with torch.no_grad():
        for precision in precisions:
            for name, (fn, work) in kernels.items():
                def run(fn: Callable[[], object] = fn, precision: str = precision) -> object:
                    with autocast(precision, device):
                        return fn()
                median, best = timed(run, device, min_time, max_repeats)
                result[f"{name}_{precision}"] = work / best  # best: the peak is what the machine can do
    return result


def row(what: str, fn: Callable[[], object], frames: int, work: float, device: torch.device,
        min_time: float, max_repeats: int) -> dict[str, Any]:
    median, best = timed(fn, device, min_time, max_repeats)
    per_frame = work / frames
    return {"what": what, "gflop_per_frame": per_frame, "ms_per_frame": median / frames * 1e3,
            "best_ms_per_frame": best / frames * 1e3, "gflop_per_s": work / median}


def measure(device: torch.device, quick: bool) -> dict[str, Any]:
    min_time, max_repeats = (0.5, 3) if quick else (3.0, 20)
    peak = peaks(device, 2.0, 40)  # the best of many calls, quick or not: a peak must not be underestimated
    peak16 = max(peak.get("matmul_bf16", 0.0), peak.get("conv3x3_bf16", 0.0)) or None
    rows: list[dict[str, Any]] = []
    torch.manual_seed(0)
    x = torch.rand(CHUNK, 4, SIZE, SIZE, device=device)
    nets = {
        "baseline": UNet(**BASELINE_UNET, channels_last=False),
        "baseline_cl": UNet(**BASELINE_UNET, channels_last=True),
        "default": UNet(**default_unet(), channels_last=True),
    }
    with torch.no_grad():
        for net in nets.values():
            net.to(device).eval()
        work = {key: gflop(lambda net=net: net(x)) for key, net in nets.items()}
        unet_rows = [
            ("U-Net, previous default (depth 5, NCHW, fp32): baseline", "baseline", "32"),
            ("U-Net, previous default, channels-last, fp32", "baseline_cl", "32"),
            ("U-Net, experiments/rerender.yaml, fp32", "default", "32"),
        ]
        if peak16:
            unet_rows.append(("U-Net, experiments/rerender.yaml, bf16", "default", "bf16"))
        for what, key, precision in unet_rows:
            def forward(net: UNet = nets[key], precision: str = precision) -> object:
                with autocast(precision, device):
                    return net(x)
            rows.append({"group": "unet", "precision": precision,
                         **row(what, forward, CHUNK, work[key], device, min_time, max_repeats)})
        vae = HeadVAENet(**default_vae()).to(device).eval()
        z = torch.randn(VAE_BATCH, vae.latent_dim, device=device)
        decode_work = gflop(lambda: vae.decoder(z))
        for precision in ["32", "bf16"] if peak16 else ["32"]:
            def decode(precision: str = precision) -> object:
                with autocast(precision, device):
                    return vae.decoder(z)
            rows.append({"group": "vae_decode", "precision": precision,
                         **row(f"head VAE decode, {precision}", decode, VAE_BATCH, decode_work, device, min_time,
                               max_repeats)})
    cfg = default_vae()
    textures = torch.rand(VAE_BATCH, 3, cfg["texture_size"], cfg["texture_size"], device=device)
    blend = torch.rand(VAE_BATCH, cfg["num_blend_shapes"], device=device)
    train_rows = [("head VAE training step, NCHW, fp32: baseline", False, "32"),
                  ("head VAE training step, channels-last, fp32", True, "32")]
    if peak16:  # Lightning's --trainer.precision=bf16-mixed: autocast around the forward pass
        train_rows.append(("head VAE training step, channels-last, bf16-mixed", True, "bf16"))
    for what, channels_last, precision in train_rows:
        net = HeadVAENet(**cfg).to(device).train()
        batch = textures
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
            batch = textures.contiguous(memory_format=torch.channels_last)
        optimiser = torch.optim.Adam(net.parameters())

        def step(net: HeadVAENet = net, batch: torch.Tensor = batch, optimiser: Any = optimiser,
                 precision: str = precision) -> None:
            optimiser.zero_grad(set_to_none=True)
            with autocast(precision, device):
                recon, blend_out, mu, log_var = net(batch, blend)
                loss = (recon.float() - batch).abs().mean() + (blend_out.float() - blend).square().mean()
            loss.backward()
            optimiser.step()
        rows.append({"group": "vae_train", "precision": precision,
                     **row(what, step, VAE_BATCH, gflop(step), device, min_time, max_repeats)})
    # Measured again after the rows, the best of both kept: a peak taken while something else ran would be low.
    peak = {key: max(value, peaks(device, 2.0, 40)[key]) for key, value in peak.items()}
    peak32 = max(peak["matmul_32"], peak["conv3x3_32"])
    peak16 = max(peak.get("matmul_bf16", 0.0), peak.get("conv3x3_bf16", 0.0)) or None
    for r in rows:
        r["share_of_peak"] = r["gflop_per_s"] / (peak16 if r["precision"] == "bf16" else peak32)
    for group in ("unet", "vae_decode", "vae_train"):
        members = [r for r in rows if r["group"] == group]
        for r in members:
            r["speedup_over_baseline"] = members[0]["ms_per_frame"] / r["ms_per_frame"]
    return {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "peaks_gflop_per_s": peak, "peak_fp32": peak32, "peak_bf16": peak16, "rows": rows}


def report(result: dict[str, Any]) -> None:
    peaks_text = ", ".join(f"{k} {v:.0f}" for k, v in result["peaks_gflop_per_s"].items())
    print(f"\n{result['device']}: peak GFLOP/s measured now: {peaks_text}; share of peak is against the best "
          f"kernel of the row's precision")
    print(f"{'network':<56}{'GFLOP/frame':>12}{'ms/frame':>10}{'GFLOP/s':>9}{'of peak':>9}{'speed-up':>10}")
    for r in result["rows"]:
        print(f"{r['what']:<56}{r['gflop_per_frame']:>12.3f}{r['ms_per_frame']:>10.2f}{r['gflop_per_s']:>9.0f}"
              f"{r['share_of_peak']:>9.0%}{r['speedup_over_baseline']:>9.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    meta = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_average": os.getloadavg()[0], "quick": args.quick, "unix_time": int(time.time()),
            "unet_default": default_unet(), "unet_baseline": BASELINE_UNET, "vae": default_vae()}
    print(f"{meta['cpus']} CPUs, {meta['threads']} threads, torch {meta['torch']}, load {meta['load_average']:.2f}")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        results.append(measure(device, args.quick))
        report(results[-1])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
