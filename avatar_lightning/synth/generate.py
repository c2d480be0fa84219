"""Write a synthetic capture into a capture cache: presets, sequences, frames, ground truth, previews."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from avatar_lightning import __version__
from avatar_lightning.cache.files import staged_folder
from avatar_lightning.cache.layout import (
    BLEND_WEIGHTS,
    POSE,
    TEXTURES,
    clean_plate_array,
    foreground_array,
    frames_array,
    truth_array,
)
from avatar_lightning.cache.manifest import CameraRecord, SequenceRecord
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.cache.template import write_template
from avatar_lightning.errors import CacheError
from avatar_lightning.synth.blendshapes import BLEND_SHAPE_NAMES
from avatar_lightning.synth.performance import DRIVER_STYLES, generate_performance
from avatar_lightning.synth.scene import StudioRenderer, make_cameras, make_identity, wall_texture

STAGE = "synth"
ACTOR_CAMERAS = ("frontal", "diagonal_left", "diagonal_right")
DRIVER_CAMERAS = ("frontal",)


@dataclass(frozen=True)
class SynthPreset:
    """Sizes and lengths of a synthetic capture.

    Attributes:
        width, height: frame size in pixels.
        texture_size: side of the square UV textures.
        fps: frames per second.
        train_seconds: length of each training sequence.
        val_seconds, test_seconds: the validation and held-out test sequences.
        driver_seconds: length of another identity's driving sequence (``--identity K``).
        face_fraction: the face oval's share of the frame height.
        supersampling: render at this multiple and average down (anti-aliasing).
        noise: sensor noise, standard deviation in 8-bit levels.
        chunk: frames rendered per batch (memory vs speed).
    """

    width: int
    height: int
    texture_size: int
    fps: float
    train_seconds: tuple[float, ...]
    val_seconds: float
    test_seconds: float
    driver_seconds: float
    face_fraction: float = 0.5
    supersampling: int = 2
    noise: float = 1.5
    chunk: int = 16


PRESETS: dict[str, SynthPreset] = {
    # For tests: seconds to make, every stage runs on it in seconds.
    "tiny": SynthPreset(64, 64, 64, 25.0, (2.0, 2.0, 1.6), 0.8, 1.6, 2.0, chunk=32),
    # The default: four 30 s training sequences and a 30 s held-out one, CPU-friendly.
    "small": SynthPreset(256, 256, 128, 25.0, (30.0, 30.0, 30.0, 30.0), 10.0, 30.0, 20.0, supersampling=1),
    # The one-command demo: every stage of the chain within minutes on a 2-core CPU (faces ~80 px high).
    "demo": SynthPreset(160, 160, 64, 25.0, (20.0, 20.0, 20.0), 5.0, 20.0, 12.0, supersampling=1),
    # The paper's capture: head region about 520x360, about 3 minutes of training data, 30 s held out.
    "paper": SynthPreset(
        544, 720, 256, 25.0, (45.0, 45.0, 45.0, 45.0), 10.0, 30.0, 30.0, face_fraction=0.55, supersampling=1
    ),
}


def _sequence_plan(preset: SynthPreset, identity: int) -> list[tuple[str, float, str]]:
    if identity > 0:
        return [("drive", preset.driver_seconds, "test")]
    plan = [(f"train_{i}", s, "train") for i, s in enumerate(preset.train_seconds)]
    return [*plan, ("val", preset.val_seconds, "val"), ("test", preset.test_seconds, "test")]


def _meta(preset_name: str, identity: int, seed: int, style: str = "default") -> dict:
    meta = {
        "generator": "avatar_lightning.synth",
        "version": __version__,
        "preset": preset_name,
        "identity": identity,
        "seed": seed,
    }
    if style != "default":  # caches of the default style keep the keys they always had
        meta["style"] = style
    return meta


def generate(
    out: str | Path,
    preset: str | SynthPreset = "small",
    identity: int = 0,
    seed: int = 0,
    overwrite: bool = False,
    previews: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
    style: str = "default",
) -> CaptureCache:
    """Make (or find up to date) the synthetic capture at ``out``.

    Identity 0 is the actor: three cameras, training, validation and test sequences. Identity K >= 1 is
    another person filmed by one frontal camera: a driving video whose true blend weights are known.

    ``style`` names the performance's style (:data:`~avatar_lightning.synth.performance.DRIVER_STYLES`): how
    the person speaks and emotes; ``default`` is the actor's.

    An existing different cache is refused unless ``overwrite``; the same finished cache is kept as it is.
    """
    if isinstance(preset, SynthPreset):  # a custom size (tests, benchmarks): named by its settings
        config, preset = preset, "custom"
    elif preset not in PRESETS:
        raise CacheError(f"unknown preset {preset!r}; presets are {sorted(PRESETS)}")
    else:
        config = PRESETS[preset]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise CacheError(f"seed must be an integer, got {seed!r}")
    if identity < 0:
        raise CacheError(f"identity must be >= 0, got {identity}")
    if style not in DRIVER_STYLES:
        raise CacheError(f"unknown style {style!r}; styles are {sorted(DRIVER_STYLES)}")
    out = Path(out)
    meta = _meta(preset, identity, seed, style)
    if preset == "custom":
        meta["preset_config"] = json.loads(json.dumps(asdict(config)))  # as the manifest will hold it
    if (out / "manifest.json").exists():
        try:
            existing = CaptureCache(out)
            same = {k: existing.manifest.meta.get(k) for k in meta} == meta
            complete = bool(existing.manifest.meta.get("complete"))
        except CacheError:
            same = complete = False
        if same and complete and not overwrite:
            return existing
        # An unfinished cache of the same settings (a run killed by an older version) is simply made again.
        if not overwrite and not (same and not complete):
            state = "a different" if complete else "an unfinished, different"
            raise CacheError(f"{out} already holds {state} capture cache; pass --overwrite to replace it")
    elif out.exists() and not out.is_dir():
        raise CacheError(f"--out {out} is a file, not a folder; choose a folder for the capture cache")
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise CacheError(f"{out} is not empty and holds no capture cache; choose an empty folder or pass --overwrite")

    started = time.perf_counter()
    rng = np.random.default_rng([seed, identity])
    person = make_identity(identity, config.texture_size, seed=seed)
    camera_names = DRIVER_CAMERAS if identity > 0 else ACTOR_CAMERAS
    cameras = make_cameras(camera_names, config.width, config.height, config.face_fraction)
    renderer = StudioRenderer(person, cameras, wall_texture(512, rng), supersampling=config.supersampling)

    sequences, weights, poses, first = [], [], [], 0
    for name, seconds, split in _sequence_plan(config, identity):
        n = max(int(round(seconds * config.fps)), 1)
        w, p = generate_performance(n, config.fps, rng, DRIVER_STYLES[style])
        sequences.append(SequenceRecord(name, first, first + n - 1, split))
        weights.append(w)
        poses.append(p)
        first += n
    blend_weights, pose = np.concatenate(weights), np.concatenate(poses)
    num_frames = len(blend_weights)
    records = [
        CameraRecord(name=name, **{k: v for k, v in record.items() if k != "name"})
        for name, record in zip(camera_names, cameras.as_dicts(), strict=True)
    ]
    # Built in a hidden folder beside `out` and renamed into place when complete: a killed run leaves the
    # previous cache (if any) as it was, never a half-written one at `out`.
    with staged_folder(out, STAGE) as staging:
        cache = CaptureCache.create(
            staging,
            fps=config.fps,
            num_frames=num_frames,
            sequences=sequences,
            cameras=records,
            meta={**meta, "complete": False, "preset_config": asdict(config), "blend_shapes": list(BLEND_SHAPE_NAMES)},
        )

        face = person.face
        write_template(cache, {"vertices": face.vertices.numpy(), "triangles": face.triangles.numpy(),
                               "uvs": face.uvs.numpy(), "uv_triangles": face.uv_faces.numpy(),
                               "blend_basis": face.blend_basis.numpy()}, STAGE)
        for tracked, truth, array in ((POSE, truth_array("pose"), pose),
                                      (BLEND_WEIGHTS, truth_array("blend_weights"), blend_weights)):
            cache.write_array(tracked, array, stage=STAGE, per_frame=True)
            cache.write_array(truth, array, stage=STAGE, per_frame=True)

        size, chunk = config.texture_size, config.chunk
        with cache.array_writer(
            TEXTURES, (num_frames, size, size, 3), np.uint8, stage=STAGE, per_frame=True
        ) as textures:
            for start in range(0, num_frames, chunk):
                stop = min(start + chunk, num_frames)
                textures[start:stop] = np.round(person.texture.render(blend_weights[start:stop]) * 255).astype(np.uint8)
                if progress:
                    progress("textures", stop, num_frames)
            textures.flush()
            texture_map = textures  # rendered from the stored uint8 textures, so the cache reproduces its frames

            plates = (renderer.clean_plates.numpy() * 255).round().astype(np.uint8)
            noise_rng = np.random.default_rng([seed, identity, 99])
            for c, name in enumerate(camera_names):
                plate_noise = noise_rng.normal(0, config.noise / 4, plates[c].shape)
                cache.write_array(
                    clean_plate_array(name),
                    np.clip(plates[c] + plate_noise, 0, 255).round().astype(np.uint8),
                    stage=STAGE,
                )
                shape = (num_frames, config.height, config.width)
                with (
                    cache.array_writer(
                        frames_array(name), (*shape, 3), np.uint8, stage=STAGE, per_frame=True
                    ) as frames,
                    cache.array_writer(foreground_array(name), shape, np.uint8, stage=STAGE,
                                       per_frame=True) as masks,
                ):
                    for start in range(0, num_frames, chunk):
                        stop = min(start + chunk, num_frames)
                        with torch.no_grad():
                            image, mask = renderer.render(
                                torch.from_numpy(blend_weights[start:stop]),
                                torch.from_numpy(pose[start:stop]),
                                torch.from_numpy(np.asarray(texture_map[start:stop], np.float32) / 255),
                                c,
                            )
                        noisy = image.numpy() * 255 + noise_rng.normal(0, config.noise, image.shape)
                        frames[start:stop] = np.clip(noisy, 0, 255).round().astype(np.uint8)
                        masks[start:stop] = (mask.numpy() * 255).round().astype(np.uint8)
                        if progress:
                            progress(f"camera {name}", stop, num_frames)
        if previews:
            from avatar_lightning.synth.preview import write_previews

            paths = write_previews(cache, camera_names)
            cache.set_meta(previews=[str(p.relative_to(cache.root)) for p in paths])
        cache.set_meta(complete=True, seconds_to_generate=round(time.perf_counter() - started, 1))
    return CaptureCache(out)
