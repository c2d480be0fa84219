"""Inference backends side by side on the re-render U-Net: ms/frame, speed-up, GFLOP/s, difference from float32.

    python benchmarks/backends.py                        # 256², batch 1 and 16, every backend
    python benchmarks/backends.py --quick                # fewer repeats
    python benchmarks/backends.py --network unshuffle=2 depth=4     # UNet arguments over the default network
    python benchmarks/backends.py --backends eager onnxruntime      # a subset (eager, the baseline, always runs)
    python benchmarks/backends.py --threads 1            # torch's and ONNX Runtime's threads (default: torch's)
    python benchmarks/backends.py --json out.json        (default benchmarks/results/backends.json)

The network is ``experiments/rerender.yaml``'s U-Net (4 input channels, depth 5, width 32, group norm), in eval
mode, random weights (speed does not depend on them), on the CPU. Backends, all on the same weights:

- ``eager``: PyTorch eager, NCHW (contiguous) weights and input: the **baseline** every ``speedup`` divides;
- ``channels_last``: weights and input in channels-last (NHWC) memory order, the same numbers;
- ``channels_last_bf16``: the same under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
- ``onnxruntime``: ``runtime.make_runner(net, "onnxruntime")``, float32, ``torch.get_num_threads()`` threads;
- ``compile``: ``runtime.make_runner(net, "compile")`` (inductor; needs a C++ compiler).

The input is made in each backend's layout before timing (the renderer's ``(B, H, W, 3)`` output permuted to
``(B, 3, H, W)`` already is channels-last in memory). Timing: every backend is called once (``setup_s``: the
export or compilation), then the backends take turns for ``--rounds`` rounds so that load from other processes
falls on all of them alike; ``ms_per_frame`` is the median call / batch, ``best_ms_per_frame`` the fastest,
``speedup`` and ``speedup_best`` the baseline's median and fastest over the backend's; ``seconds`` lists every
timed call. On a machine shared with other jobs, threads of one parallel region wait for each other whenever one
is descheduled, which slows a multi-threaded call several times over: compare the fastest calls there, or run
with ``--threads 1``, and record the load (``meta.load_average``).
``gflop_per_frame`` is counted by ``torch.utils.flop_counter`` on the eager network (a multiply-add = 2 FLOPs),
``gflop_per_s`` is that over the median. ``max_abs_diff`` is the largest difference of a backend's raw output
(6 channels, logits of order 1) from eager float32 on the same input.
"""

from __future__ import annotations

import argparse
import ast
import copy
import inspect
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _timing import cpu_name  # a sibling module: benchmarks run as `python benchmarks/X.py`
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from avatar_lightning.avatar.runtime import make_runner
from avatar_lightning.nets.unet import UNet

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "backends.json"
NETWORK = {"in_channels": 4, "out_channels": 6, "depth": 5, "width": 32, "max_width": 256, "norm": "group"}
BACKENDS = ("eager", "channels_last", "channels_last_bf16", "onnxruntime", "compile")
Forward = Callable[[Tensor], Tensor]


def network(overrides: dict[str, Any]) -> UNet:
    """The U-Net with ``overrides`` over ``NETWORK``; NCHW unless asked otherwise (where UNet has the switch)."""
    config = {**NETWORK, **overrides}
    if "channels_last" in inspect.signature(UNet).parameters:
        config.setdefault("channels_last", False)
    return UNet(**config).eval()


def backends(net: UNet, names: list[str]) -> dict[str, tuple[Forward, torch.memory_format]]:
    """Each backend's forward pass and the memory format its input is given in."""
    nhwc = copy.deepcopy(net).to(memory_format=torch.channels_last)

    @torch.no_grad()
    def eager(x: Tensor) -> Tensor:
        return net(x)

    @torch.no_grad()
    def channels_last(x: Tensor) -> Tensor:
        return nhwc(x)

    @torch.no_grad()
    def channels_last_bf16(x: Tensor) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return nhwc(x)

    makers: dict[str, Callable[[], tuple[Forward, torch.memory_format]]] = {
        "eager": lambda: (eager, torch.contiguous_format),
        "channels_last": lambda: (channels_last, torch.channels_last),
        "channels_last_bf16": lambda: (channels_last_bf16, torch.channels_last),
        "onnxruntime": lambda: (make_runner(net, "onnxruntime"), torch.contiguous_format),
        "compile": lambda: (make_runner(net, "compile"), torch.contiguous_format),
    }
    return {name: makers[name]() for name in names}


def gflop_per_frame(net: UNet, x: Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return counter.get_total_flops() / 1e9 / len(x)


def measure(net: UNet, names: list[str], size: int, batch: int, rounds: int, min_time: float,
            max_repeats: int) -> list[dict[str, Any]]:
    """One row per backend at ``batch`` frames of ``size``², timed in turns (see the module docstring)."""
    x = torch.rand(batch, NETWORK["in_channels"], size, size)
    work = gflop_per_frame(net, x)
    runs = backends(net, names)
    inputs = {name: x.contiguous(memory_format=layout) for name, (_, layout) in runs.items()}
    reference = runs["eager"][0](x)
    setup, diff = {}, {}
    for name, (forward, _) in runs.items():
        start = time.perf_counter()
        out = forward(inputs[name])
        setup[name] = time.perf_counter() - start
        diff[name] = float((out.float() - reference).abs().max())
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (forward, _) in runs.items():
            start, repeats = time.perf_counter(), 0
            while repeats < 2 or (time.perf_counter() - start < min_time and repeats < max_repeats):
                t0 = time.perf_counter()
                forward(inputs[name])
                times[name].append(time.perf_counter() - t0)
                repeats += 1
    baseline, baseline_best = statistics.median(times["eager"]), min(times["eager"])
    rows = []
    for name in runs:
        median, best = statistics.median(times[name]), min(times[name])
        rows.append({"backend": name, "resolution": size, "batch": batch, "ms_per_frame": median / batch * 1e3,
                     "best_ms_per_frame": best / batch * 1e3, "speedup": baseline / median,
                     "speedup_best": baseline_best / best, "gflop_per_frame": work,
                     "gflop_per_s": work * batch / median, "max_abs_diff": diff[name], "setup_s": setup[name],
                     "seconds": [round(t, 4) for t in times[name]]})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'backend':<20} {'size':>5} {'batch':>5} {'ms/frame':>9} {'best':>9} {'speed-up':>8} {'(best)':>7} "
          f"{'GFLOP/s':>8} {'max|diff|':>10} {'setup s':>8}")
    for r in rows:
        print(f"{r['backend']:<20} {r['resolution']:>5} {r['batch']:>5} {r['ms_per_frame']:>9.1f} "
              f"{r['best_ms_per_frame']:>9.1f} {r['speedup']:>7.2f}x {r['speedup_best']:>6.2f}x "
              f"{r['gflop_per_s']:>8.1f} {r['max_abs_diff']:>10.2e} {r['setup_s']:>8.1f}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are Python literals where they parse as one (``2``, ``True``), else strings."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--network takes KEY=VALUE pairs, got {item!r}")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    unknown = set(overrides) - set(inspect.signature(UNet).parameters)
    if unknown:
        raise SystemExit(f"UNet has no argument {', '.join(sorted(unknown))}; it takes "
                         f"{', '.join(inspect.signature(UNet).parameters)}")
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--network", nargs="*", default=[], metavar="KEY=VALUE", help="UNet arguments")
    parser.add_argument("--backends", nargs="*", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--sizes", nargs="*", type=int, default=[256])
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 16])
    parser.add_argument("--threads", type=int, default=None, help="threads of every backend (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.network)
    names = ["eager"] + [name for name in args.backends if name != "eager"]
    rounds, min_time, max_repeats = (2, 0.5, 3) if args.quick else (3, 3.0, 10)
    torch.manual_seed(0)
    net = network(overrides)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    meta = {
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "cpu": cpu_name(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
        "load_average": os.getloadavg(), "network": {**NETWORK, **overrides},
        "parameters": sum(p.numel() for p in net.parameters()), "quick": args.quick, "rounds": rounds,
        "unix_time": int(time.time()),
    }
    try:
        import onnxruntime

        meta["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        meta["onnxruntime"] = None
    print(f"U-Net {meta['network']}, {meta['parameters']:,} parameters; {meta['cpu']}, {meta['cpus']} CPUs, "
          f"{meta['threads']} threads, torch {meta['torch']}, onnxruntime {meta['onnxruntime']}, load "
          f"{meta['load_average'][0]:.1f}", flush=True)
    results = []
    for size in args.sizes:
        for batch in args.batches:
            rows = measure(net, names, size, batch, rounds, min_time, max_repeats)
            print_table(rows)
            results += rows
    meta["load_average_after"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
