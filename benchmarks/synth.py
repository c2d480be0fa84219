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
from _timing import PhaseTimer  # a sibling module: benchmarks run as `python benchmarks/X.py`

from avatar_lightning.synth.generate import PRESETS, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--json", default="benchmarks/results/synth.json")
    args = parser.parse_args()

    timer = PhaseTimer()
    with tempfile.TemporaryDirectory() as tmp:
        start = timer.last = time.perf_counter()
        generate(Path(tmp) / "cache", preset=args.preset, previews=True, progress=timer)
        total = time.perf_counter() - start
    rows = timer.rows(total, "set-up, ground truth, previews")
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
