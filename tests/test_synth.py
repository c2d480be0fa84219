"""The built-in synthetic actor: determinism, shapes and splits, faithful frames, real faces, bad input."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from avatar_lightning.cache import CacheError, CaptureCache
from avatar_lightning.cache.template import load_template
from avatar_lightning.cli import main
from avatar_lightning.render import Cameras
from avatar_lightning.synth.blendshapes import BLEND_SHAPE_NAMES
from avatar_lightning.synth.face import detect_landmarks
from avatar_lightning.synth.generate import ACTOR_CAMERAS, PRESETS, generate
from avatar_lightning.synth.performance import generate_performance
from avatar_lightning.synth.scene import StudioRenderer, make_cameras, make_identity, wall_texture


def test_shapes_splits_and_ranges(synthetic_tiny: CaptureCache) -> None:
    cache, preset = synthetic_tiny, PRESETS["tiny"]
    n, k = cache.num_frames, len(BLEND_SHAPE_NAMES)
    assert 12 <= k <= 20
    assert [s.split for s in cache.sequences] == ["train"] * len(preset.train_seconds) + ["val", "test"]
    assert sum(s.num_frames for s in cache.sequences) == n
    assert [c.name for c in cache.cameras] == list(ACTOR_CAMERAS)
    template = load_template(cache)
    assert template.blend_basis.shape == (k, template.num_vertices, 3)
    assert cache.record("tracking/blend_weights").shape == (n, k)
    assert cache.record("tracking/pose").shape == (n, 6)
    assert cache.record("tracking/textures").shape == (n, preset.texture_size, preset.texture_size, 3)
    for camera in ACTOR_CAMERAS:
        assert cache.record(f"cameras/{camera}/frames").shape == (n, preset.height, preset.width, 3)
        assert cache.record(f"cameras/{camera}/clean_plate").shape == (preset.height, preset.width, 3)
        foreground = cache.read(f"truth/{camera}/foreground")
        assert 0.05 < foreground.mean() / 255 < 0.6  # the actor fills part of the frame, not all of it
    weights = cache.read("tracking/blend_weights")
    assert weights.min() >= 0 and weights.max() <= 1 and weights.std(0).max() > 0.1
    yaw = np.abs(cache.read("tracking/pose")[:, 1])
    assert yaw.max() <= np.deg2rad(26)
    assert cache.manifest.meta["complete"] and cache.manifest.meta["blend_shapes"] == list(BLEND_SHAPE_NAMES)


def test_textures_change_with_expression(synthetic_tiny: CaptureCache) -> None:
    textures = synthetic_tiny.read("tracking/textures").astype(np.float32)
    per_texel_std = textures.std(0).mean(-1)
    assert (per_texel_std > 8).mean() > 0.02  # the mouth island, eyelids, wrinkles vary; most of the face does not


def test_same_seed_same_cache_and_cli(synthetic_tiny: CaptureCache, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert main(["synth", "--out", str(out), "--preset", "tiny", "--seed", "0"]) == 0
    again = CaptureCache(out)
    assert again.names() == synthetic_tiny.names()
    for name in again.names():
        np.testing.assert_array_equal(again.read(name), synthetic_tiny.read(name), err_msg=name)
    with av.open(str(out / "previews" / "frontal.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == again.num_frames


def test_other_seed_other_performance() -> None:
    a = generate_performance(100, 25.0, np.random.default_rng(1))
    b = generate_performance(100, 25.0, np.random.default_rng(2))
    assert not np.allclose(a[0], b[0])


def test_stored_ground_truth_reproduces_the_frames(synthetic_tiny: CaptureCache) -> None:
    """Rendering the cache's own template, tracking and textures gives back its frames (up to sensor noise)."""
    cache, preset = synthetic_tiny, PRESETS["tiny"]
    identity = make_identity(0, preset.texture_size, seed=0)
    template = load_template(cache)
    assert torch.equal(template.vertices, identity.face.vertices)
    assert torch.equal(template.triangles, identity.face.triangles)
    cameras = Cameras.from_dicts(cache.cameras)
    renderer = StudioRenderer(identity, cameras, wall_texture(512, np.random.default_rng(0)), preset.supersampling)
    frames = slice(10, 30)
    for c, name in enumerate(ACTOR_CAMERAS):
        with torch.no_grad():
            image, mask = renderer.render(
                torch.from_numpy(cache.read("tracking/blend_weights", frames.start, frames.stop)),
                torch.from_numpy(cache.read("tracking/pose", frames.start, frames.stop)),
                torch.from_numpy(cache.read("tracking/textures", frames.start, frames.stop).astype(np.float32) / 255),
                c)
        truth_mask = cache.read(f"truth/{name}/foreground", frames.start, frames.stop) / 255
        np.testing.assert_allclose(mask.numpy(), truth_mask, atol=1 / 255 + 1e-6)
        foreground = truth_mask > 0.99
        error = np.abs(image.numpy() * 255 - cache.read(f"cameras/{name}/frames", frames.start, frames.stop))
        assert error[foreground].mean() < 2.0 * preset.noise, f"{name}: {error[foreground].mean():.2f} levels"
        assert error[foreground].max() < 12, f"{name}: worst pixel differs by {error[foreground].max():.0f} levels"


@pytest.mark.parametrize("identity", [0, 2])
def test_mediapipe_finds_the_synthetic_faces(identity: int) -> None:
    """At the default preset's size a real face tracker finds the actor (>= 90 % frontal, >= 80 % diagonal)."""
    preset = PRESETS["small"]
    person = make_identity(identity, preset.texture_size, seed=0)
    names = ACTOR_CAMERAS if identity == 0 else ("frontal",)
    cameras = make_cameras(names, preset.width, preset.height, preset.face_fraction)
    rng = np.random.default_rng(identity)
    renderer = StudioRenderer(person, cameras, wall_texture(512, rng), supersampling=1)
    weights, pose = generate_performance(250, preset.fps, rng)
    sample = np.arange(0, 250, 25)  # 10 frames spread over 10 seconds of performance
    textures = torch.from_numpy(person.texture.render(weights[sample]))
    for c, name in enumerate(names):
        with torch.no_grad():
            image, _ = renderer.render(torch.from_numpy(weights[sample]), torch.from_numpy(pose[sample]), textures, c)
        frames = (image.numpy() * 255).round().astype(np.uint8)
        found = np.mean([detect_landmarks(frame) is not None for frame in frames])
        assert found >= (0.9 if name == "frontal" else 0.8), f"identity {identity}, {name}: {found:.0%}"


def test_another_identity_is_a_one_camera_driving_video(tmp_path: Path) -> None:
    cache = generate(tmp_path / "driver", preset="tiny", identity=1, seed=3, previews=False)
    assert [c.name for c in cache.cameras] == ["frontal"]
    assert [(s.name, s.split) for s in cache.sequences] == [("drive", "test")]
    assert cache.record("truth/blend_weights").shape == (cache.num_frames, len(BLEND_SHAPE_NAMES))
    actor = make_identity(0, 64).face.vertices
    assert not torch.allclose(load_template(cache).vertices, actor)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_and_nothing_is_overwritten(synthetic_tiny: CaptureCache, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CacheError, match="unknown preset 'huge'"):
        generate(tmp_path / "x", preset="huge")
    with pytest.raises(CacheError, match="seed must be an integer"):
        generate(tmp_path / "x", preset="tiny", seed="7")  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path / "x"), "--seed", "seven"])
    assert "invalid int value" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    manifest = (synthetic_tiny.root / "manifest.json").read_text()
    with pytest.raises(CacheError, match="different capture cache.*--overwrite"):
        generate(synthetic_tiny.root, preset="tiny", seed=1)
    assert (synthetic_tiny.root / "manifest.json").read_text() == manifest
    assert generate(synthetic_tiny.root, preset="tiny", seed=0).root == synthetic_tiny.root  # up to date: kept
    assert (synthetic_tiny.root / "manifest.json").read_text() == manifest

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not empty"):
        generate(occupied, preset="tiny")
    assert (occupied / "notes.txt").read_text() == "mine"
