"""Shared helpers of the benchmark scripts: timing, the CPU's name, the experiment files' settings (imported as a
sibling module: ``python benchmarks/X.py``)."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def timed(fn: Callable[[], object], device: torch.device, min_time: float, max_repeats: int) -> tuple[float, float]:
    """Median and best seconds per call after one warm-up call (best: least disturbed by other load)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


class PhaseTimer:
    """A stage's ``progress(what, done, total)`` callback that adds up wall time and frames per named phase.

    The time between two reports is charged to the phase that reports second (the one that was running).
    """

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}
        self.last = time.perf_counter()

    def __call__(self, what: str, done: int, total: int) -> None:
        now = time.perf_counter()
        entry = self.phases.setdefault(what, {"frames": 0, "seconds": 0.0})
        entry["seconds"] += now - self.last
        entry["frames"] = done
        self.last = now

    def rows(self, total_seconds: float, rest: str) -> list[dict[str, float | str]]:
        """One row per phase with frames/s, then ``rest``: the time no phase reported."""
        rows: list[dict[str, float | str]] = [
            {"phase": name, **v, "frames_per_s": v["frames"] / max(v["seconds"], 1e-9)}
            for name, v in self.phases.items()]
        accounted = sum(float(r["seconds"]) for r in rows)
        rows.append({"phase": rest, "frames": 0, "seconds": total_seconds - accounted, "frames_per_s": 0.0})
        return rows


def cpu_name() -> str:
    """The CPU model (platform.processor() is empty on many Linux machines)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def experiment(name: str) -> dict[str, Any]:
    """The parsed experiment file ``experiments/<name>.yaml`` (what a benchmark measures as "the default")."""
    return yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())


def rerender_network() -> dict[str, Any]:
    """The re-render U-Net's settings in ``experiments/rerender.yaml`` (UNet's and Rerenderer's shared arguments)."""
    args = experiment("rerender")["model"]["init_args"]
    keys = ("in_channels", "depth", "width", "max_width", "norm", "unshuffle")
    return {key: args[key] for key in keys if key in args}
