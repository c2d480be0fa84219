"""The user's check of a real actor's avatar: his own held-out tail drives it, as a person would run it.

    python benchmarks/self_drive.py --avatar demo/avatar --capture ../shared/data/capture/anchor_71s.mp4
    python benchmarks/self_drive.py --avatar me_long/avatar --capture me.mp4 --seconds 10 --out report/self

The last ``--seconds`` of the capture (inside its held-out test split, which is its last 20 % or 30 s) are cut to
their own video, which drives the exported avatar through the real command line (``animate --pose driving
--side-by-side --score``). Scores: ``score-transfer``'s Pearson and amplitude ratio per expression measure (FaceMesh
on his frames and on the avatar's), and dlib's identity distance between each avatar frame and his frame beside it,
with his frames' own spread as the floor. Unlike ``evaluate``'s self-reenactment, the head is posed by FaceMesh on
the driving video (not by the tracked pose) and the features come from that video: the path a user's driver takes.
Writes ``self.mp4``, ``self.transfer.{json,png}`` and ``self_drive.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import deque
from pathlib import Path

import numpy as np

from avatar_lightning.video import iter_frames, probe_video, write_video

REPO = Path(__file__).resolve().parent.parent
ANCHOR = REPO.parent / "shared" / "data" / "capture" / "anchor_71s.mp4"


def cut_tail(source: Path, target: Path, seconds: float) -> int:
    """The last ``seconds`` of ``source`` re-encoded into ``target`` (the project's reader and writer); the count."""
    fps = probe_video(source).fps
    keep = list(deque(iter_frames(source), maxlen=max(1, int(round(fps * seconds)))))
    write_video(target, np.stack(keep), fps)
    return len(keep)


def _halves(video: Path) -> tuple[np.ndarray, np.ndarray]:
    """The side-by-side video's driving (left) and avatar (right) halves, ``(N, H, W, 3) uint8`` each."""
    frames = np.stack(list(iter_frames(video)))
    half = frames.shape[2] // 2
    return frames[:, :, :half], frames[:, :, half:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--avatar", type=Path, required=True, help="an exported avatar folder (demo: <out>/avatar)")
    parser.add_argument("--capture", type=Path, default=ANCHOR, help="the clip the avatar was built from")
    parser.add_argument("--seconds", type=float, default=10.0, help="how much of the clip's end drives it")
    parser.add_argument("--out", type=Path, default=Path("self_drive"))
    args = parser.parse_args()
    if not args.capture.is_file():
        raise SystemExit(f"no capture at {args.capture}")
    from avatar_lightning.evaluation.identity import identity_scores, load_embedder

    args.out.mkdir(parents=True, exist_ok=True)
    tail = args.out / "tail.mp4"
    frames = cut_tail(args.capture, tail, args.seconds)
    video = args.out / "self.mp4"
    subprocess.run([sys.executable, "-m", "avatar_lightning", "animate", "--driving", str(tail), "--avatar",
                    str(args.avatar), "--out", str(video), "--pose", "driving", "--side-by-side", "--score",
                    "--overwrite", "--no-progress"], check=True, cwd=REPO)
    transfer = json.loads(video.with_suffix(".transfer.json").read_text())
    result = {"capture": str(args.capture), "avatar": str(args.avatar), "frames": frames,
              "transfer": transfer.get("summary", transfer), "identity": None}
    embedder = load_embedder()
    if embedder is not None:
        real, avatar = _halves(video)
        result["identity"] = identity_scores(embedder.embed(real), embedder.embed(avatar)).to_json()
    (args.out / "self_drive.json").write_text(json.dumps(result, indent=1))
    summary, identity = result["transfer"], result["identity"] or {}
    print(f"\n{frames} frames: Pearson {summary['mean_pearson']:.2f}, amplitude {summary['amplitude']:.2f}, mouth "
          f"opening {summary['mouth_open_amplitude']:.2f} (Pearson {summary['mouth_open_pearson']:.2f}), jitter "
          f"{summary['jitter_ratio']:.2f}; identity {identity.get('distance', float('nan')):.2f} (his frames "
          f"{identity.get('real_spread', float('nan')):.2f})\nwrote {args.out / 'self_drive.json'}")


if __name__ == "__main__":
    main()
