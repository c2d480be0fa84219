"""Speed of the ``animate`` chain (driving frames -> avatar video): ms/frame per stage and end-to-end frames/s.

    python benchmarks/animate.py                 # 256^2 on the CPU (and 512^2 on CUDA where present)
    python benchmarks/animate.py --quick         # fewer repeats and a shorter end-to-end clip (~1.5 min on 2 cores)
    python benchmarks/animate.py --size 256 --json benchmarks/results/animate.json

The avatar is assembled in memory, no files: the built-in synthetic actor's face template (identity 0), a frontal
camera sized to the benchmark resolution (the ``small`` preset's framing) with its clean plate, the actor's mean
head pose over a 30 s synthetic performance, and the three networks at the sizes the experiment files train
(head VAE of ``experiments/head_vae.yaml`` at 128^2 textures and 17 blend shapes, the re-render U-Net of
``experiments/rerender.yaml``, read from the file, the LSTM + residual animator with the linear skip on 1434-d MediaPipe
features, as ``experiments/lstm_mediapipe_residual.yaml``) with
random weights:
speed does not depend on the weights. The driving frames are the actor rendered at the same size by the
synthesizer's studio renderer (real faces: MediaPipe tracks them; a random-weight avatar's output is not a face).

The networks run at ``animate``'s default precision (``--precision auto``: bf16 where the CPU or GPU does it
natively, else float32). Rows, in chunks of 16 frames as ``animate`` runs them (ms/frame = median seconds per
chunk / 16): (1) MediaPipe
landmarks (frame by frame inside), (2) the animator's streaming push (steady state: the stream is primed),
(3) head VAE decode, (4) mesh deform + ``render_textured``, (5) re-render U-Net + composite + uint8 (the tail of
``AvatarRenderer.render``), (6) H.264 encoding of a whole clip through ``VideoWriter`` (open, write, flush).
End to end is measured, not summed: features of the clip, then ``stream_latents`` -> ``AvatarRenderer.render``
-> ``VideoWriter`` exactly as ``animate_cache`` does (no video decoding, no cache I/O); "rendering only" is
``stream_latents`` -> ``render``. Every stage is given as its share of the measured end-to-end time, and the
end-to-end rate against the goal (>= 10 frames/s at 256^2 on a CPU, >= 100 at 512^2 on a GPU). Baseline, measured
end to end in the same run: the chain as it was before (the previous default U-Net: plain depth 5 at full
resolution, NCHW memory, float32) -> ``speedup_over_baseline``. Variant rows show row 5 for the previous U-Net,
today's in float32, and today's at the default precision, with the end-to-end rate each gives; ``bf16_psnr_db``
is the PSNR between the same chunk rendered at the default precision and in float32 (how much bf16 changes).
On a GPU the animator, head VAE, U-Net and mesh run on CUDA; MediaPipe and encoding stay on the CPU. Without
CUDA the GPU rows are recorded as null.

Measure on an idle machine: on 2 vCPUs another busy process stalls torch's threads (the load average is
recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging: keep the table readable

from avatar_lightning.avatar import Avatar  # noqa: E402
from avatar_lightning.avatar.animate import stream_latents
from avatar_lightning.avatar.precision import autocast  # noqa: E402
from avatar_lightning.avatar.renderer import AvatarRenderer  # noqa: E402
from avatar_lightning.avatar.runtime import make_runner  # noqa: E402
from avatar_lightning.cache import CameraRecord  # noqa: E402
from avatar_lightning.features.mediapipe_landmarks import MediaPipeLandmarks  # noqa: E402
from avatar_lightning.models.animator import Animator  # noqa: E402
from avatar_lightning.models.head_vae import HeadVAE  # noqa: E402
from avatar_lightning.models.rerender import Rerenderer  # noqa: E402
from avatar_lightning.nets.unet import UNet  # noqa: E402
from avatar_lightning.render import render_textured  # noqa: E402
from avatar_lightning.synth.generate import PRESETS  # noqa: E402
from avatar_lightning.synth.performance import generate_performance  # noqa: E402
from avatar_lightning.synth.scene import StudioRenderer, make_cameras, make_identity, wall_texture  # noqa: E402
from avatar_lightning.video import VideoWriter  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _timing import cpu_name, rerender_network, timed  # noqa: E402

CHUNK = 16  # animate's default --chunk
FPS = 25.0
LATENT_DIM = 64
FEATURE_DIM = 1434
PRESET = PRESETS["small"]  # the preset the experiment files are sized for: 128^2 textures, face half the frame
GOALS = {"cpu": (256, 10.0), "cuda": (512, 100.0)}  # device -> (size, end-to-end frames/s goal)
BASELINE_UNET = {"depth": 5, "width": 32, "unshuffle": 1, "channels_last": False}  # the default before issue 14


@dataclass
class Setup:
    """Everything one device's measurement needs, built once."""

    avatar: Avatar
    renderer: AvatarRenderer
    frames: np.ndarray  # (N, H, W, 3) uint8 driving faces
    extractor: MediaPipeLandmarks
    device: torch.device


def build(size: int, frames: int, device: torch.device) -> Setup:
    """The synthetic actor's avatar with experiment-sized random models, and ``frames`` of the actor's face."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    identity = make_identity(0, PRESET.texture_size, seed=0)
    cameras = make_cameras(("frontal",), size, size, PRESET.face_fraction)
    studio = StudioRenderer(identity, cameras, wall_texture(512, rng), supersampling=1)
    weights, pose = generate_performance(int(30 * FPS), FPS, rng)  # 30 s: the pose mean is the avatar's default
    with torch.no_grad():
        textures = torch.from_numpy(identity.texture.render(weights[:frames])).float()
        images, _ = studio.render(torch.from_numpy(weights[:frames]), torch.from_numpy(pose[:frames]), textures, 0)
    driving = (images.numpy() * 255).round().astype(np.uint8)
    plate = (studio.clean_plates[0].numpy() * 255).round().astype(np.uint8)
    record = CameraRecord(name="frontal", **cameras.as_dict(0))
    info = {"default_pose": pose.mean(0).tolist(),
            "features": {"extractor": "mediapipe", "relative": "sequence", "output": "mediapipe"}}
    head_vae = HeadVAE(texture_size=PRESET.texture_size, num_blend_shapes=identity.face.num_blend_shapes,
                       latent_dim=LATENT_DIM, width=16, mean_texture=True, geometry_share=0.5,
                       perceptual_weight=0.0, adversarial_weight=0.0).eval()
    rerenderer = Rerenderer(**rerender_network(), perceptual_weight=0.0).eval()
    animator = Animator(features="mediapipe", backbone="lstm", residual_dim=16, linear_skip=True,
                        feature_dim=FEATURE_DIM, latent_dim=LATENT_DIM).eval()
    avatar = Avatar(Path("."), info, head_vae, rerenderer, animator, identity.face, [record], {record.name: plate})
    avatar.to(device)
    renderer = AvatarRenderer(avatar, fps=FPS, device=device, precision="auto")
    return Setup(avatar, renderer, driving, MediaPipeLandmarks(fps=FPS), device)


def extract(setup: Setup, frames: np.ndarray) -> np.ndarray:
    """MediaPipe features ``(N, 1434)`` of a clip, chunk by chunk, from a fresh tracker (a new video)."""
    setup.extractor.reset()
    rows = [setup.extractor(torch.from_numpy(frames[i : i + CHUNK])).values["mediapipe"].numpy()
            for i in range(0, len(frames), CHUNK)]
    return np.concatenate(rows)


def baseline_rerenderer(device: torch.device) -> Rerenderer:
    """The re-render U-Net as it was before issue 14: plain depth 5 at full resolution, NCHW memory."""
    rerenderer = Rerenderer(in_channels=4, depth=5, width=32, max_width=256, norm="group", perceptual_weight=0.0)
    rerenderer.unet = UNet(4, 6, max_width=256, norm="group", **BASELINE_UNET)
    return rerenderer.eval().to(device)


def rerender_tail(renderer: AvatarRenderer, rerenderer: Any, i_orig: Tensor, coverage: Tensor,
                  precision: str | None = None) -> np.ndarray:
    """What ``AvatarRenderer.render`` does after the mesh: U-Net, equation 1 over the plate, uint8 on the host."""
    with autocast(precision or renderer.precision, renderer.device):
        image = rerenderer(i_orig, renderer.plate, coverage).i_out
    return (image.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def chain(setup: Setup, features: np.ndarray, out: Path | None) -> None:
    """``animate_cache``'s loop: streamed latents -> rendered chunks -> the encoder (None: rendering only)."""
    with VideoWriter(out, fps=FPS) if out is not None else contextlib.nullcontext() as writer:
        for first, z in stream_latents(setup.avatar, features, CHUNK):
            image = setup.renderer.render(z, list(range(first, first + len(z))))
            if writer is not None:
                writer.write(image)


def wall(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one run of ``fn``: a whole clip, its stages already warm from the rows above."""
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def measure(size: int, device: torch.device, quick: bool) -> dict[str, Any]:
    """Stage rows, end to end and rendering only at ``size`` on ``device``."""
    clip = 32 if quick else 64
    min_time, max_repeats = (0.0, 3) if quick else (2.0, 20)
    setup = build(size, clip, device)
    renderer, avatar = setup.renderer, setup.avatar
    features = extract(setup, setup.frames)
    faces = int((np.abs(features).sum(1) > 0).sum())
    x = torch.from_numpy(features[:CHUNK])
    stream = avatar.animator.stream()
    for row in x[: avatar.animator.window]:  # primed: every push below runs the LSTM and emits a latent
        stream.push(row)
    z = avatar.animator.predict_sequence(torch.from_numpy(features).to(device))[:CHUNK]
    pose = renderer.pose.expand(CHUNK, 6)
    with autocast(renderer.precision, device):
        texture, blend = avatar.head_vae.decode(z)
    texture, blend = texture.float().permute(0, 2, 3, 1), blend.float()

    def mesh() -> tuple[Tensor, Tensor]:
        vertices = avatar.mesh.deform(blend, pose)
        return render_textured(avatar.mesh, vertices, texture, renderer.camera, renderer.settings,
                               renderer.rasterizer)

    i_orig, coverage = (t.permute(0, 3, 1, 2) for t in mesh())
    baseline = baseline_rerenderer(device)
    with FlopCounterMode(display=False) as flops:
        avatar.rerenderer(i_orig[:1], renderer.plate, coverage[:1])
    unet_gflop = flops.get_total_flops() / 1e9

    def animator() -> None:
        for row in x:
            stream.push(row.to(device))

    def decode() -> object:
        with autocast(renderer.precision, device):
            return avatar.head_vae.decode(z)

    scratch = tempfile.TemporaryDirectory(prefix="bench-animate-")  # removed at the end or at exit
    tmp = Path(scratch.name)

    def encode() -> None:
        with VideoWriter(tmp / "encode.mp4", fps=FPS) as writer:
            for i in range(0, len(setup.frames), CHUNK):
                writer.write(setup.frames[i : i + CHUNK])

    stages: list[tuple[str, str, Callable[[], object], int]] = [  # key, label, call, frames per call
        ("features", "1 features (MediaPipe landmarks)",
         lambda: setup.extractor(torch.from_numpy(setup.frames[:CHUNK])), CHUNK),
        ("animator", "2 animator (streaming push)", animator, CHUNK),
        ("head_vae", "3 head VAE decode (128^2 + blend)", decode, CHUNK),
        ("mesh", f"4 deform + rasterise + texture {size}^2", mesh, CHUNK),
        ("rerender", f"5 re-render U-Net + composite {size}^2",
         lambda: rerender_tail(renderer, avatar.rerenderer, i_orig, coverage), CHUNK),
        ("encode", f"6 video encode (H.264) {size}^2", encode, len(setup.frames)),
    ]
    rows: dict[str, dict[str, Any]] = {}
    for key, label, fn, per_call in stages:
        median, best = timed(fn, device, min_time, max_repeats)
        rows[key] = {"what": label, "ms_per_frame": median / per_call * 1e3, "best_ms_per_frame": best / per_call * 1e3}
        print(f"  {label}: {rows[key]['ms_per_frame']:.2f} ms/frame", flush=True)
    # Row 5's variants: the U-Net before issue 14, today's in float32, today's at the default precision.
    what_ifs: list[tuple[str, str, Callable[[], object], int]] = [
        ("baseline_unet", "  5 previous U-Net (depth 5, NCHW, float32)",
         lambda: rerender_tail(renderer, baseline, i_orig, coverage, "32"), CHUNK),
        ("unet_float32", "  5 experiments/rerender.yaml U-Net, float32",
         lambda: rerender_tail(renderer, avatar.rerenderer, i_orig, coverage, "32"), CHUNK),
        ("unet_default_precision", f"  5 experiments/rerender.yaml U-Net, {renderer.precision}",
         lambda: rerender_tail(renderer, avatar.rerenderer, i_orig, coverage), CHUNK),
    ]
    alternatives: dict[str, dict[str, Any]] = {}
    for key, label, fn, per_call in what_ifs:
        median, best = timed(fn, device, min_time, max_repeats)
        alternatives[key] = {"what": label, "ms_per_frame": median / per_call * 1e3,
                             "best_ms_per_frame": best / per_call * 1e3}

    def end_to_end() -> None:
        chain(setup, extract(setup, setup.frames), tmp / "e2e.mp4")

    e2e = wall(end_to_end, device) / clip * 1e3
    print(f"  end to end: {e2e:.2f} ms/frame", flush=True)
    rendering = wall(lambda: chain(setup, features, None), device) / clip * 1e3
    # The baseline: the same chain with the previous U-Net in float32 (the chain as it was before issue 14).
    default_unet, default_runner, default_precision = avatar.rerenderer, renderer.unet, renderer.precision
    avatar.rerenderer, renderer.unet, renderer.precision = baseline, make_runner(baseline.unet, "torch"), "32"
    try:
        baseline_e2e = wall(end_to_end, device) / clip * 1e3
        avatar.rerenderer, renderer.unet = default_unet, default_runner
        float32_image = renderer.render(z, list(range(CHUNK)))  # today's networks in float32
    finally:
        avatar.rerenderer, renderer.unet, renderer.precision = default_unet, default_runner, default_precision
    print(f"  end to end, baseline: {baseline_e2e:.2f} ms/frame", flush=True)
    default_image = renderer.render(z, list(range(CHUNK)))
    mse = np.mean((default_image.astype(np.float64) - float32_image.astype(np.float64)) ** 2)
    precision_psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    for row in rows.values():
        row["share_of_end_to_end"] = row["ms_per_frame"] / e2e
    stage_sum = sum(r["ms_per_frame"] for r in rows.values())
    render_sum = sum(rows[k]["ms_per_frame"] for k in ("animator", "head_vae", "mesh", "rerender"))
    for row in alternatives.values():  # the end-to-end rate with row 5 replaced by this variant
        row["end_to_end_frames_per_s_estimate"] = 1e3 / (e2e - rows["rerender"]["ms_per_frame"] + row["ms_per_frame"])
    scratch.cleanup()
    setup.extractor.tracker.close()
    goal_size, goal = GOALS[device.type]
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "size": size, "chunk": CHUNK, "clip_frames": clip, "frames_with_face": faces, "rows": rows,
        "what_if": alternatives, "sum_of_stages_ms_per_frame": stage_sum,
        "precision": renderer.precision, "bf16_psnr_db": precision_psnr if renderer.precision != "32" else None,
        "end_to_end_ms_per_frame": e2e, "end_to_end_frames_per_s": 1e3 / e2e,
        "baseline_end_to_end_ms_per_frame": baseline_e2e, "baseline_end_to_end_frames_per_s": 1e3 / baseline_e2e,
        "speedup_over_baseline": baseline_e2e / e2e,
        "rendering_only_ms_per_frame": rendering, "rendering_only_frames_per_s": 1e3 / rendering,
        "rendering_stages_sum_ms_per_frame": render_sum,
        "unet_gflop_per_frame": unet_gflop, "unet_gflop_per_s": unet_gflop / rows["rerender"]["ms_per_frame"] * 1e3,
        "goal_frames_per_s": goal if size == goal_size else None,
        "end_to_end_over_goal": (1e3 / e2e) / goal if size == goal_size else None,
    }


def report(result: dict[str, Any]) -> None:
    """The table: ms/frame per stage, each as a share of the measured end-to-end time (the baseline)."""
    e2e = result["end_to_end_ms_per_frame"]
    print(f"\n{result['size']}^2 on {result['device']}, chunks of {CHUNK}, {result['clip_frames']}-frame clip "
          f"({result['frames_with_face']} with a face), precision {result['precision']}; shares of the measured "
          "end-to-end time")
    print(f"{'stage':<48}{'ms/frame':>10}{'best':>9}{'share':>9}")
    for row in result["rows"].values():
        print(f"{row['what']:<48}{row['ms_per_frame']:>10.2f}{row['best_ms_per_frame']:>9.2f}"
              f"{row['share_of_end_to_end']:>9.1%}")
    for row in result["what_if"].values():
        print(f"{row['what']:<48}{row['ms_per_frame']:>10.2f}{row['best_ms_per_frame']:>9.2f}  what-if: end to end "
              f"{row['end_to_end_frames_per_s_estimate']:.2f} frames/s")
    print(f"{'sum of stages 1-6':<48}{result['sum_of_stages_ms_per_frame']:>10.2f}{'':>9}"
          f"{result['sum_of_stages_ms_per_frame'] / e2e:>9.1%}")
    print(f"{'end to end, measured':<48}{e2e:>10.2f}{'':>9}{1:>9.1%}")
    print(f"{'end to end, previous U-Net in float32 (baseline)':<48}{result['baseline_end_to_end_ms_per_frame']:>10.2f}"
          f"   -> today's chain is {result['speedup_over_baseline']:.2f}x faster")
    if result["bf16_psnr_db"] is not None:
        print(f"{result['precision']} against float32, same networks and chunk: PSNR {result['bf16_psnr_db']:.1f} dB")
    print(f"rendering only (stream_latents -> render): {result['rendering_only_ms_per_frame']:.2f} ms/frame = "
          f"{result['rendering_only_frames_per_s']:.2f} frames/s (stages 2-5 sum "
          f"{result['rendering_stages_sum_ms_per_frame']:.2f} ms/frame)")
    print(f"re-render U-Net: {result['unet_gflop_per_frame']:.1f} GFLOP/frame, {result['unet_gflop_per_s']:.0f} "
          f"GFLOP/s achieved")
    goal = result["goal_frames_per_s"]
    verdict = (f" = {result['end_to_end_over_goal']:.2f}x the goal of {goal:g} frames/s" if goal is not None
               else " (the goal is set at another size)")
    print(f"end to end (no video decoding): {result['end_to_end_frames_per_s']:.2f} frames/s{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, a 32-frame end-to-end clip")
    parser.add_argument("--size", type=int, default=256, help="output size on the CPU (square)")
    parser.add_argument("--json", default="benchmarks/results/animate.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"animate chain: {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, {cpu_name()} "
          f"({platform.machine()}), torch {torch.__version__}, load {load}; random weights", flush=True)
    result: dict[str, Any] = {
        "machine": platform.platform(), "processor": cpu_name(), "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "load_average": load, "quick": args.quick,
        "unix_time": int(time.time()),
    }
    result["cpu"] = measure(args.size, torch.device("cpu"), args.quick)
    report(result["cpu"])
    if torch.cuda.is_available():
        result["gpu"] = measure(GOALS["cuda"][0], torch.device("cuda"), args.quick)
        report(result["gpu"])
    else:
        result["gpu"] = None
        print(f"\nGPU rows ({GOALS['cuda'][0]}^2, goal >= {GOALS['cuda'][1]:g} frames/s): not measured, "
              "torch.cuda.is_available() is False on this machine")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
