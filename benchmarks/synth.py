"""How long the synthetic actor takes to make, per phase, on this machine.

    python benchmarks/synth.py [--preset small] [--json benchmarks/results/synth.json]

Prints a table (phase, frames, seconds, frames/s) and writes it as JSON. The issue's goal: the small preset
in under 5 minutes on the 2-core CPU machine. The baseline of the ratio column is the whole run.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from avatar_lightning.synth.generate import PRESETS, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--json", default="benchmarks/results/synth.json")
    args = parser.parse_args()

    phases: dict[str, dict[str, float]] = {}
    last = {"t": time.perf_counter()}

    def progress(what: str, done: int, total: int) -> None:
        now = time.perf_counter()
        entry = phases.setdefault(what, {"frames": 0, "seconds": 0.0})
        entry["seconds"] += now - last["t"]
        entry["frames"] = done
        last["t"] = now

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        last["t"] = start
        generate(Path(tmp) / "cache", preset=args.preset, previews=True, progress=progress)
        total = time.perf_counter() - start
    rows = [{"phase": name, **v, "frames_per_s": v["frames"] / max(v["seconds"], 1e-9)} for name, v in phases.items()]
    accounted = sum(r["seconds"] for r in rows)
    rows.append(
        {"phase": "set-up, ground truth, previews", "frames": 0, "seconds": total - accounted, "frames_per_s": 0.0}
    )
    print(f"synthetic actor, preset {args.preset}, {platform.node()} ({torch.get_num_threads()} threads)")
    print(f"{'phase':<32}{'frames':>8}{'seconds':>10}{'frames/s':>10}{'share':>8}")
    for r in rows:
        share = r["seconds"] / total
        print(f"{r['phase']:<32}{r['frames']:>8}{r['seconds']:>10.1f}{r['frames_per_s']:>10.1f}{share:>8.0%}")
    print(f"{'total':<32}{'':>8}{total:>10.1f}")
    result = {
        "preset": args.preset,
        "total_seconds": total,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "processor": platform.processor(),
        "phases": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
