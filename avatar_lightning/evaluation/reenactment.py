"""Self-reenactment, frame by frame: the ladder of where motion is lost, a side-by-side video and a contact sheet.

The actor's held-out test frames (the first ``max_frames`` of the test sequences, consecutive, one camera) drive
the avatar through their features and their tracked poses. At each rung of the chain the ten expression measures
(:mod:`.expression_measures`) are compared with FaceMesh on the real frames, per measure the Pearson correlation
and the amplitude ratio (:func:`.transfer_score.score_measures`, the real frames in the driver's place), so a fix
shows which rung it mends:

==============  ==================================================================================================
rung            measures of
==============  ==================================================================================================
tracked mesh    the template deformed by ``prepare``'s tracked blend weights (its FaceMesh landmark vertices)
head VAE        the template deformed by the head VAE's decoding of its own encoding of each frame (the reference)
animator        the template deformed by the decoding of the animator's prediction
I_orig          FaceMesh on the mesh rendering (decoded UV texture on the decoded, posed mesh)
I_out           FaceMesh on the final frame (re-render U-Net, composited over the clean plate)
==============  ==================================================================================================

I_orig and I_out are given for both latents: the animator's, and the reference's (what the animator is trained to
reproduce). Beside the decoder rungs, the spread over the tail of the decoded blend weights and UV textures relative
to the tracked ones (1 = as varied as the tracking; a decoder that pulls towards its mean face gives much less), and
the share of the tracked textures' variation the decoded ones reproduce (texture R²). Beside the I_out rungs, the
U-Net's mean weight α on I_orig over the mouth (a box round the posed mesh's lips) and over the rest of the face the
mesh covers: a U-Net that paints its own mouth over I_orig's loses the mouth's motion there, and says so (on the
shared anchor, 0.93 over the mouth with the default budgets, 0.56 with twice their time, where the mouth froze).

The video shows the real frame, the avatar's frame (animator) and the reference's, side by side; the contact sheet
the frames where the person's mouth is widest, eyes widest and most closed, and brows highest, with the avatar's
frames beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from avatar_lightning.avatar.renderer import AvatarRenderer
from avatar_lightning.cache.files import atomic_write
from avatar_lightning.cache.layout import BLEND_WEIGHTS, POSE, TEXTURES, frames_array
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.cache.template import load_template
from avatar_lightning.errors import CacheError
from avatar_lightning.evaluation.candidates import Candidate, held_out, predictions
from avatar_lightning.evaluation.expression_measures import MEASURES
from avatar_lightning.evaluation.images import cache_avatar, tracked_sways
from avatar_lightning.evaluation.transfer_score import MeasureStream, TransferScore, mesh_measures, score_measures
from avatar_lightning.video import VideoWriter

LADDER_FRAMES = 125  # 5 s at 25 fps: every rung at 512^2 in about two minutes on a 2-core CPU
RUNGS = ("tracked mesh", "head VAE", "animator", "I_orig", "I_out")
# The person's extreme expressions the contact sheet shows: (title, measures averaged, largest or smallest).
EXTREMES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("mouth widest", ("mouth_open",), True),
    ("eyes widest", ("eye_open_right", "eye_open_left"), True),
    ("eyes most closed", ("eye_open_right", "eye_open_left"), False),
    ("brows highest", ("brow_raise_right", "brow_raise_left"), True),
)


@dataclass
class Rung:
    """One rung of the ladder: its measures against the real frames' (``score``), and optional spreads."""

    name: str
    latents: str  # "tracking", "reference" (the head VAE's encoding) or "animator"
    score: TransferScore
    spread: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        s = self.score.summary()
        return {"rung": self.name, "latents": self.latents, "mean_pearson": s["mean_pearson"],
                "mouth_open_pearson": s["mouth_open_pearson"], "amplitude": s["amplitude"],
                "mouth_open_amplitude": s["mouth_open_amplitude"], "face_fraction": s["face_fraction"],
                **self.spread}


@dataclass
class Ladder:
    """Every rung for one animator cell on the first frames of the held-out tail."""

    label: str
    camera: str
    frames: int
    rungs: list[Rung]
    video: Path | None = None
    contact_sheet: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "camera": self.camera, "frames": self.frames,
                "video": None if self.video is None else str(self.video),
                "contact_sheet": None if self.contact_sheet is None else str(self.contact_sheet),
                "rungs": [{**_finite(r.summary()), "measures": r.score.to_json()["measures"]} for r in self.rungs]}

    def markdown(self) -> str:
        def fmt(value: float | None) -> str:
            return "n/a" if value is None or not np.isfinite(value) else f"{value:.2f}"

        lines = [f"Where motion is lost: `{self.label}` driven by the actor's held-out tail ({self.frames} frames, "
                 f"camera `{self.camera}`), every rung's expression measures against FaceMesh on the real frames. "
                 "Pearson: in step (1 best); amplitude: the rung's spread of each measure over the real one's (median "
                 "over measures; 1 = as lively, 0 = frozen); spread: decoded blend weights / UV textures over the "
                 "tracked ones; texture R²: the share of the tracked textures' variation over the tail the decoded "
                 "ones reproduce (0 = no better than their mean); I_orig weight: the U-Net's mean α over the mouth "
                 "and over the rest of the face the mesh covers (low: it paints its own face over I_orig).", "",
                 "| rung | latents | mean Pearson | mouth Pearson | amplitude | mouth amplitude | blend spread | "
                 "texture spread | texture R² | I_orig weight, mouth / rest of face |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for rung in self.rungs:
            s = rung.summary()
            weight = (f"{fmt(s['orig_weight_mouth'])} / {fmt(s['orig_weight_face'])}" if "orig_weight_mouth" in s
                      else "n/a")
            lines.append(f"| {rung.name} | {rung.latents} | {fmt(s['mean_pearson'])} | "
                         f"{fmt(s['mouth_open_pearson'])} | {fmt(s['amplitude'])} | {fmt(s['mouth_open_amplitude'])} | "
                         f"{fmt(s.get('blend_spread'))} | {fmt(s.get('texture_spread'))} | "
                         f"{fmt(s.get('texture_r2'))} | {weight} |")
        return "\n".join(lines) + "\n"


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in values.items()}


def spread_ratio(values: np.ndarray, reference: np.ndarray) -> float:
    """Mean over channels of the standard deviation over frames of ``values (N, ...)``, over the same of
    ``reference``: 1 = as varied, 0 = constant."""
    values, reference = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (values, reference))
    base = reference.std(axis=0).mean()
    return float(values.std(axis=0).mean() / base) if base > 0 else float("nan")


class _TextureSpread:
    """Decoded against tracked UV textures, accumulated chunk by chunk (memory flat): the spread ratio, and the
    share of the tracked textures' variation over the tail that the decoded ones reproduce (R², 1 = all of it,
    0 = no better than the tail's mean texture). The tracked textures carry noise too, so the spread alone can
    mislead: a decoder that reproduces only the expression's share of it scores a spread below 1 and a good R²."""

    def __init__(self) -> None:
        self.sums: dict[str, list[np.ndarray | int]] = {}
        self.errors: dict[str, float] = {}

    def add(self, name: str, textures: np.ndarray, tracked: np.ndarray | None = None) -> None:
        x = np.asarray(textures, np.float64).reshape(len(textures), -1)
        entry = self.sums.setdefault(name, [np.zeros(x.shape[1]), np.zeros(x.shape[1]), 0])
        entry[0] += x.sum(0)
        entry[1] += (x**2).sum(0)
        entry[2] += len(x)
        if tracked is not None:
            error = ((x - np.asarray(tracked, np.float64).reshape(len(tracked), -1)) ** 2).sum()
            self.errors[name] = self.errors.get(name, 0.0) + float(error)

    def r2(self, name: str, reference: str = "tracked") -> float:
        total, squares, count = self.sums[reference]
        variation = float((squares - total**2 / count).sum())
        return 1 - self.errors[name] / variation if variation > 0 else float("nan")

    def std(self, name: str) -> float:
        total, squares, count = self.sums[name]
        mean = total / count
        return float(np.sqrt(np.maximum(squares / count - mean**2, 0)).mean())

    def ratio(self, name: str, reference: str = "tracked") -> float:
        base = self.std(reference)
        return self.std(name) / base if base > 0 else float("nan")


class _OrigWeight:
    """The U-Net's mean weight α on I_orig over the mouth and over the rest of the face the mesh covers: where it
    falls, the U-Net paints its own face over the mesh rendering, and I_orig's motion no longer reaches I_out."""

    def __init__(self) -> None:
        self.mouth: list[float] = []
        self.face: list[float] = []

    def add(self, layers: Any) -> None:
        for alpha, covered, (x0, y0, x1, y1) in zip(layers.alpha, layers.coverage, layers.mouth, strict=True):
            box = np.zeros_like(covered)
            box[y0:y1, x0:x1] = True
            if (covered & box).any():
                self.mouth.append(float(alpha[covered & box].mean()))
            if (covered & ~box).any():
                self.face.append(float(alpha[covered & ~box].mean()))

    def summary(self) -> dict[str, float]:
        return {"orig_weight_mouth": float(np.mean(self.mouth)) if self.mouth else float("nan"),
                "orig_weight_face": float(np.mean(self.face)) if self.face else float("nan")}


def ladder_rows(cache: CaptureCache, candidate: Candidate, latents: str, max_frames: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tail's first ``max_frames`` test frames: cache rows, the candidate's latents and the reference's."""
    data = held_out(cache, candidate.features if candidate.features != "-" else _any_features(cache), latents, "test")
    predicted = np.concatenate(predictions(candidate, data))
    reference = np.concatenate(data.z)
    rows = np.concatenate(data.rows)
    keep = slice(0, min(max_frames, len(rows)))
    return rows[keep], predicted[keep].astype(np.float32), reference[keep].astype(np.float32)


def _any_features(cache: CaptureCache) -> str:
    names = [n.removeprefix("features/") for n in cache.names("features/*") if not n.endswith(".valid")]
    if not names:
        raise CacheError(f"{cache.root}: no features to hold out a test sequence with")
    return names[0]


def self_reenactment(cache: CaptureCache, head_vae: Any, rerenderer: Any, candidate: Candidate,
                     latents: str = "head_vae", camera: str | None = None, max_frames: int = LADDER_FRAMES,
                     out: Path | None = None, chunk: int = 8,
                     log: Callable[[str], None] = print) -> Ladder:
    """The ladder of ``candidate`` on the held-out tail (see the module docstring); with ``out``, also
    ``<out>/reenactment.mp4`` (real | animator | reference) and ``<out>/reenactment_extremes.png``."""
    camera = camera or cache.cameras[0].name
    rows, z_animator, z_reference = ladder_rows(cache, candidate, latents, max_frames)
    if len(rows) < 8:
        raise CacheError(f"{cache.root}: {len(rows)} held-out frames; the ladder needs at least 8")
    log(f"self-reenactment ladder of {candidate.label}: {len(rows)} frames of camera {camera}")
    mesh = load_template(cache)
    poses = torch.from_numpy(np.asarray(cache.array(POSE)[rows], np.float32))
    sways = tracked_sways(cache, camera, rows)
    renderer = AvatarRenderer(cache_avatar(cache, head_vae, rerenderer, [camera], mesh, poses.mean(0)), camera,
                              fps=cache.fps)
    real_frames = cache.array(frames_array(camera))
    tracked_blend = np.asarray(cache.array(BLEND_WEIGHTS)[rows], np.float32)
    tracked_textures = cache.array(TEXTURES)

    real_stream = MeasureStream()  # first the real frames: they choose the contact sheet's frames
    for start in range(0, len(rows), chunk):
        real_stream.push(np.asarray(real_frames[rows[start : start + chunk]]))
    real = real_stream.measures()
    picks = extreme_frames(real)
    streams = {key: MeasureStream() for key in ("animator I_orig", "animator I_out", "reference I_orig",
                                                "reference I_out")}
    decoded_blend: dict[str, list[np.ndarray]] = {"reference": [], "animator": []}
    textures = _TextureSpread()
    weights = {"animator": _OrigWeight(), "reference": _OrigWeight()}
    kept: dict[int, dict[str, np.ndarray]] = {}  # the contact sheet's frames, by position in the tail
    writer = VideoWriter(out / "reenactment.mp4", fps=cache.fps) if out is not None else None
    try:
        if writer is not None:
            writer.__enter__()
        for start in range(0, len(rows), chunk):
            part = slice(start, start + chunk)
            real_part = np.asarray(real_frames[rows[part]])
            tracked_part = np.asarray(tracked_textures[rows[part]], np.float32) / 255
            textures.add("tracked", tracked_part)
            panels = {"real": real_part}
            for name, z in (("animator", z_animator), ("reference", z_reference)):
                z_part = torch.from_numpy(z[part])
                with torch.no_grad():
                    texture, blend = head_vae.decode(z_part)
                decoded_blend[name].append(blend.numpy())
                textures.add(name, texture.permute(0, 2, 3, 1).numpy(), tracked_part)
                layers = renderer.render_layers(z_part, list(range(start, start + len(z_part))), poses=poses[part],
                                                sways=None if sways is None else sways[part])
                streams[f"{name} I_orig"].push(layers.i_orig)
                streams[f"{name} I_out"].push(layers.i_out)
                weights[name].add(layers)
                panels[name], panels[f"{name} I_orig"] = layers.i_out, layers.i_orig
            for _, position in picks:
                if start <= position < start + len(real_part):
                    kept[position] = {key: value[position - start] for key, value in panels.items()}
            if writer is not None:
                writer.write(np.stack([_labelled_row([panels["real"][i], panels["animator"][i], panels["reference"][i]],
                                                     ["real", "avatar", "reference"]) for i in range(len(real_part))]))
    finally:
        if writer is not None:
            writer.__exit__(None, None, None)
    measures = {key: stream.measures() for key, stream in streams.items()}
    blends = {name: np.concatenate(values) for name, values in decoded_blend.items()}

    def score(series: np.ndarray) -> TransferScore:
        return score_measures(real, series, cache.fps)

    rungs = [
        Rung("tracked mesh", "tracking", score(mesh_measures(mesh, tracked_blend))),
        Rung("head VAE", "reference", score(mesh_measures(mesh, blends["reference"])),
             {"blend_spread": spread_ratio(blends["reference"], tracked_blend),
              "texture_spread": textures.ratio("reference"), "texture_r2": textures.r2("reference")}),
        Rung("animator", "animator", score(mesh_measures(mesh, blends["animator"])),
             {"blend_spread": spread_ratio(blends["animator"], tracked_blend),
              "texture_spread": textures.ratio("animator"), "texture_r2": textures.r2("animator")}),
        Rung("I_orig", "reference", score(measures["reference I_orig"])),
        Rung("I_out", "reference", score(measures["reference I_out"]), weights["reference"].summary()),
        Rung("I_orig", "animator", score(measures["animator I_orig"])),
        Rung("I_out", "animator", score(measures["animator I_out"]), weights["animator"].summary()),
    ]
    result = Ladder(candidate.label, camera, len(rows), rungs)
    if out is not None:
        result.video = out / "reenactment.mp4"
        result.contact_sheet = out / "reenactment_extremes.png"
        write_contact_sheet(picks, kept, result.contact_sheet)
    return result


def extreme_frames(real: np.ndarray) -> list[tuple[str, int]]:
    """``(title, position)`` of the person's extreme expressions in measure series ``real (N, M)``."""
    picks = []
    for title, names, largest in EXTREMES:
        series = real[:, [MEASURES.index(n) for n in names]].mean(1)
        if np.isfinite(series).any():
            picks.append((title, int(np.nanargmax(series) if largest else np.nanargmin(series))))
    return picks


def write_contact_sheet(picks: Sequence[tuple[str, int]], frames: dict[int, dict[str, np.ndarray]],
                        path: Path) -> Path:
    """Rows: the person's extreme frames (``picks``, :func:`extreme_frames`); columns: real, avatar (animator),
    its I_orig, reference."""
    columns = [("real", "real"), ("animator", "avatar"), ("animator I_orig", "avatar I_orig"),
               ("reference", "reference")]
    if not picks:
        raise CacheError("FaceMesh found no face in the real held-out frames: no contact sheet")
    rows = [_labelled_row([frames[i][key] for key, _ in columns],
                          [f"{title} (frame {i})" if k == 0 else label for k, (_, label) in enumerate(columns)])
            for title, i in picks]
    sheet = np.concatenate(rows, axis=0)
    atomic_write(path, lambda tmp: cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)), suffix=".tmp.png")
    return path


def _labelled_row(images: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """Images side by side, each with its label in white on a dark band along its top edge."""
    out = []
    for image, label in zip(images, labels, strict=True):
        image = np.ascontiguousarray(image).copy()
        scale = max(0.3, image.shape[0] / 1000)
        (width, height), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        band = height + base + 6
        image[:band, : width + 8] = (image[:band, : width + 8] * 0.35).astype(np.uint8)
        cv2.putText(image, label, (4, height + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
        out.append(image)
    return np.concatenate(out, axis=1)
