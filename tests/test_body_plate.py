"""The body plate: a torso that sways is tracked, kept sharp, and laid back under the U-Net where it was.

A synthetic monocular scene stands in for a talking person: a textured backdrop that never moves, a patterned
torso (shirt and tie) that sways by a known sub-pixel translation, and a face above it that moves on its own and
keeps changing. ``prepare``'s half (:mod:`avatar_lightning.capture.body_plate`, OpenCV) and the renderer's half
(:mod:`avatar_lightning.render.body`, torch) are checked against that truth and against each other.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avatar_lightning.avatar import export_avatar, load_avatar
from avatar_lightning.avatar.renderer import AvatarRenderer
from avatar_lightning.cache import CacheError, CaptureCache, SequenceRecord
from avatar_lightning.cache.layout import body_arrays, clean_plate_array, frames_array, torso_sway_array
from avatar_lightning.capture import body_plate
from avatar_lightning.capture.body_plate import (
    band_top,
    body_region,
    estimate_body,
    fit_sway_from_pose,
    track_torso,
    translate,
)
from avatar_lightning.render.body import BodyLayer, frame_plates, read_body_layer
from avatar_lightning.render.body import translate as torch_translate

SIZE = 96
FRAMES = 60


def _texture(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    noise = rng.normal(0, 1, (*shape, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma)
    return np.clip(128 + 60 * smooth / smooth.std(), 0, 255).astype(np.uint8)


def _ellipse(centre: np.ndarray, radii: tuple[float, float], count: int = 40) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    return np.stack([centre[0] + radii[0] * np.cos(angles), centre[1] + radii[1] * np.sin(angles)], 1)


def scene(seed: int = 0) -> dict[str, np.ndarray]:
    """``frames (N, H, W, 3)``, the true ``sways (N, 2)``, ``faces (N, 40, 2)``, ``person (N, H, W)``, the
    backdrop, the body at zero sway and its mask."""
    rng = np.random.default_rng(seed)
    backdrop = _texture(rng, (SIZE, SIZE), 3.0)
    body = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[64:, 6:90] = 1  # shoulders
    mask[54:64, 38:58] = 1  # the neck
    body[:] = _texture(rng, (SIZE, SIZE), 2.0)
    t = np.arange(FRAMES)
    sways = np.stack([3.0 * np.sin(t / 5.0), 1.5 * np.cos(t / 7.0)], 1).astype(np.float32)
    head = np.stack([2.5 * np.sin(t / 3.0 + 1), 1.0 * np.sin(t / 4.0)], 1)  # the head moves on its own
    frames, faces, person = [], [], []
    for k in range(FRAMES):
        moved_mask = translate(mask, sways[k], cv2.BORDER_CONSTANT)[..., None]
        frame = moved_mask * translate(body, sways[k]) + (1 - moved_mask) * backdrop
        outline = _ellipse(np.array([48.0, 34.0]) + head[k], (14, 20))
        face = np.zeros((SIZE, SIZE), np.uint8)
        cv2.fillConvexPoly(face, np.round(outline).astype(np.int32), 1)
        frame[face.astype(bool)] = rng.integers(90, 200, (int(face.sum()), 3))  # a face that keeps changing
        frames.append(np.clip(frame, 0, 255).round().astype(np.uint8))
        faces.append(outline.astype(np.float32))
        person.append(np.maximum(moved_mask[..., 0], face))
    return {"frames": np.stack(frames), "sways": sways, "faces": np.stack(faces), "person": np.stack(person),
            "backdrop": backdrop, "body": body, "mask": mask}


@pytest.fixture(scope="module")
def swaying() -> dict[str, np.ndarray]:
    return scene()


def _tracked(s: dict[str, np.ndarray]):  # noqa: ANN202
    rows = np.arange(0, FRAMES, 3)
    return track_torso(s["frames"], s["faces"], np.arange(FRAMES), body_region(s["person"][rows], s["faces"][rows]))


def test_the_torso_sway_is_tracked_to_a_fraction_of_a_pixel(swaying: dict[str, np.ndarray]) -> None:
    sway = _tracked(swaying)
    assert sway is not None and sway.failed == 0
    error = sway.shifts - swaying["sways"]
    error -= error.mean(0)  # the sway is relative to the median torso: any constant offset is the plate's
    assert np.abs(error).max() < 0.2, np.abs(error).max(0)
    assert error.std(0).max() < 0.08
    # without the body's region the static, textured backdrop beside the torso pulls the sway towards zero
    loose = track_torso(swaying["frames"], swaying["faces"], np.arange(FRAMES))
    assert loose is not None and np.abs((loose.shifts - swaying["sways"]) - (loose.shifts - swaying["sways"]).mean(0)
                                        ).max() > np.abs(error).max()


def test_the_body_plate_puts_the_torso_back_sharp_where_it_was(swaying: dict[str, np.ndarray]) -> None:
    sway = _tracked(swaying)
    rows = np.arange(0, FRAMES, 3)
    body = estimate_body(swaying["frames"][rows], sway.shifts[rows], swaying["person"][rows],
                         swaying["faces"][rows], swaying["backdrop"])
    weight = body.mask.astype(np.float32) / 255
    truth = swaying["mask"] > 0
    # the mask is the torso (shoulders and neck), not the face or the backdrop
    assert weight[truth].mean() > 0.8 and weight[~truth].mean() < 0.05
    assert weight[20:50, 34:62].max() < 0.02  # the face (a feathered edge may touch its bottom)
    assert 0.2 < body.coverage < 0.5
    # laid over the backdrop at each frame's tracked sway, the torso comes back as the frame shows it
    plates = frame_plates(_float(swaying["backdrop"]), _float(body.plate), torch.from_numpy(weight)[None, None],
                          torch.from_numpy(sway.shifts))
    torso = np.stack([translate(swaying["mask"], s, cv2.BORDER_CONSTANT) > 0.99 for s in swaying["sways"]])
    torso[:, 86:] = False  # the bottom rows: what swayed in from below the frame was never seen
    torso[:, :62] = False  # the neck under the chin: the face's hull is left out of the body (the U-Net's part)
    error = np.abs(plates.permute(0, 2, 3, 1).numpy() * 255 - swaying["frames"])[torso].mean()
    static = np.abs(swaying["backdrop"].astype(np.float32) - swaying["frames"])[torso].mean()
    mean_body = np.abs(np.median(swaying["frames"], 0) - swaying["frames"].astype(np.float32))[torso].mean()
    assert error < 5.0, error  # levels of 255: a fine texture resampled bilinearly twice
    assert error < mean_body / 4 and error < static / 8, (error, mean_body, static)


def _float(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


def test_prepare_and_the_renderer_move_images_alike() -> None:
    """``prepare`` stabilises frames with OpenCV, training and animation move the plate with torch: one sway must
    mean one displacement in both."""
    image = _texture(np.random.default_rng(1), (40, 56), 2.0)
    for shift in ([3.0, -2.0], [0.4, 1.7], [-5.25, 0.0]):
        opencv = translate(image, np.array(shift)).astype(np.float32)
        moved = torch_translate(_float(image), torch.tensor([shift])).permute(0, 2, 3, 1)[0].numpy() * 255
        inner = (slice(6, -6), slice(6, -6))  # the border rule differs only in what moves in from outside
        assert np.abs(opencv[inner] - moved[inner]).max() < 1.0, shift
    torch.testing.assert_close(torch_translate(_float(image), torch.zeros(1, 2)), _float(image), atol=1e-5, rtol=0)


def test_frame_plates_lay_the_body_over_the_clean_plate_only_where_it_is_body() -> None:
    clean, body = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1
    plates = frame_plates(clean, body, mask, torch.tensor([[0.0, 0.0], [0.0, 2.0]]))
    assert plates.shape == (2, 3, 8, 8)
    expected = torch.zeros(2, 3, 8, 8)
    expected[0, :, 4:] = 1
    expected[1, :, 6:] = 1  # moved down by two rows
    torch.testing.assert_close(plates, expected, atol=1e-5, rtol=0)


def test_only_the_bodys_window_is_resampled_and_that_changes_nothing() -> None:
    rng = np.random.default_rng(3)
    mask = np.zeros((64, 48), np.uint8)
    mask[44:, 16:32] = 255
    layer = BodyLayer.from_arrays(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8), mask, np.zeros((7, 2)),
                                  np.array([[-3.0, -2.0], [4.0, 1.0]]))
    top, bottom, left, right = layer.window
    assert (top, bottom, left, right) == (44 - 4 - 8, 64, 16 - 4 - 8, 32 + 4 + 8)  # the bottom edge: the frame's
    clean = torch.rand(1, 3, 64, 48)
    sways = torch.tensor([[-3.0, -2.0], [4.0, 1.0], [0.3, -0.7], [-10.0, 8.0]])  # the last: beyond the range
    torch.testing.assert_close(layer.plates(clean, sways), frame_plates(clean, layer.plate, layer.mask, sways),
                               atol=1e-4, rtol=0)
    empty = BodyLayer.from_arrays(np.zeros((64, 48, 3), np.uint8), np.zeros((64, 48), np.uint8), np.zeros((7, 2)),
                                  np.zeros((2, 2)))
    torch.testing.assert_close(empty.plates(clean, sways), clean.expand(4, -1, -1, -1))


def test_the_sway_of_a_new_head_pose_is_linear_and_stays_in_range() -> None:
    rng = np.random.default_rng(2)
    poses = rng.normal(0, 0.05, (200, 6))
    truth = np.concatenate([rng.normal(0, 20, (6, 2)), [[1.5, -0.5]]])
    sways = np.concatenate([poses, np.ones((200, 1))], 1) @ truth
    fitted = fit_sway_from_pose(poses, sways, ridge=1e-9)
    np.testing.assert_allclose(fitted, truth, atol=1e-3)
    layer = BodyLayer.from_arrays(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8), fitted,
                                  np.stack([sways.min(0), sways.max(0)]))
    inside = layer.sway_from_pose(torch.from_numpy(poses[:5]).float())
    np.testing.assert_allclose(inside.numpy(), sways[:5], atol=1e-3)
    wild = layer.sway_from_pose(torch.full((1, 6), 10.0))  # a pose far outside the capture's
    assert (wild >= layer.low).all() and (wild <= layer.high).all()


def test_no_torso_to_track_gives_no_body_plate(swaying: dict[str, np.ndarray]) -> None:
    assert band_top(np.array([90.0, 92.0]), SIZE) is None  # the face reaches the bottom of the frame
    low_faces = swaying["faces"] + [0.0, 50.0]
    assert track_torso(swaying["frames"], low_faces, np.arange(FRAMES)) is None
    assert track_torso(swaying["frames"], np.full_like(swaying["faces"], np.nan), np.arange(FRAMES)) is None
    flat = np.full((10, SIZE, SIZE, 3), 128, np.uint8)  # nothing to match: every frame fails
    assert track_torso(flat, swaying["faces"][:10], np.arange(10)) is None


def test_bad_body_layers_are_refused(tmp_path: Path, swaying: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="must be"):
        BodyLayer.from_arrays(np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4), np.uint8), np.zeros((7, 2)),
                              np.zeros((2, 2)))
    with pytest.raises(ValueError, match="sway from pose"):
        BodyLayer.from_arrays(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8), np.zeros((6, 2)),
                              np.zeros((2, 2)))
    cache = CaptureCache.create(tmp_path / "cache", fps=25.0, num_frames=FRAMES,
                                sequences=[SequenceRecord("train", 0, FRAMES - 1, "train")])
    cache.write_array(clean_plate_array("cam0"), swaying["backdrop"], stage="test")
    assert read_body_layer(cache, "cam0") is None  # no body plate: the clean plate alone
    cache.write_array(torso_sway_array("cam0"), swaying["sways"], stage="test", per_frame=True)
    with pytest.raises(CacheError, match="incomplete"):
        read_body_layer(cache, "cam0")
    plate, mask, _, from_pose = body_arrays("cam0")
    cache.write_array(plate, swaying["body"], stage="test")
    cache.write_array(mask, (swaying["mask"] * 255).astype(np.uint8), stage="test")
    cache.write_array(from_pose, np.zeros((7, 2), np.float32), stage="test")
    layer = read_body_layer(cache, "cam0")
    assert layer is not None
    np.testing.assert_allclose(layer.low.numpy(), swaying["sways"].min(0))
    np.testing.assert_allclose(layer.high.numpy(), swaying["sways"].max(0))


# ------------------------------------------------------------------------ from the cache to the avatar's frames
def _with_body(source: Path, target: Path) -> tuple[CaptureCache, str]:
    """A copy of the cache at ``source`` whose first camera has a body plate: a red torso in the bottom quarter
    that sways down by 0, 1, 2 rows in turn; from a pose it sways by (1, 0)."""
    shutil.copytree(source, target)
    cache = CaptureCache(target)
    record = cache.cameras[0]
    height, width = record.height, record.width
    body = np.zeros((height, width, 3), np.uint8)
    body[..., 0] = 255
    mask = np.zeros((height, width), np.uint8)
    mask[3 * height // 4 :] = 255
    sways = np.stack([np.zeros(cache.num_frames), np.arange(cache.num_frames) % 3], 1).astype(np.float32)
    from_pose = np.zeros((7, 2), np.float32)
    from_pose[6] = [1.0, 0.0]
    for name, data, per_frame in zip(body_arrays(record.name), (body, mask, sways, from_pose),
                                     (False, False, True, False), strict=True):
        cache.write_array(name, data, stage="test", per_frame=per_frame)
    return CaptureCache(target), record.name


def test_a_body_plate_travels_from_the_cache_into_the_avatar_and_its_frames(avatar_dir: Path, tmp_path: Path
                                                                             ) -> None:
    cache, camera = _with_body(avatar_dir.parent / "actor", tmp_path / "actor")
    checkpoints = [avatar_dir.parent / f for f in ("vae.ckpt", "rerender.ckpt", "animator.ckpt")]
    avatar = load_avatar(export_avatar(cache, tmp_path / "avatar", *checkpoints))
    assert list(avatar.bodies) == [camera]
    layer = avatar.bodies[camera]
    np.testing.assert_array_equal((layer.plate[0].permute(1, 2, 0) * 255).round().byte().numpy(),
                                  cache.read(body_arrays(camera)[0]))
    np.testing.assert_allclose(layer.high.numpy(), [0.0, 2.0])
    renderer = AvatarRenderer(avatar, camera)
    pose = torch.zeros(1, 6)
    height = cache.cameras[0].height
    still = renderer.plates(pose, torch.zeros(1, 2))[0]
    assert still[0, 3 * height // 4 + 1 :].eq(1).all() and still[1:, 3 * height // 4 + 1 :].eq(0).all()
    torch.testing.assert_close(still[:, : 3 * height // 4 - 2], renderer.plate[0, :, : 3 * height // 4 - 2])
    # with no tracked sway, the pose's sway, clipped to the capture's range: (1, 0) -> (0, 0)
    torch.testing.assert_close(renderer.plates(pose), still[None])
    z = torch.zeros(2, avatar.head_vae.hparams.latent_dim)
    images = renderer.render(z, [0, 1], poses=pose.expand(2, 6), sways=torch.tensor([[0.0, 0.0], [0.0, 2.0]]))
    changed = np.flatnonzero(np.abs(images[0].astype(int) - images[1]).max(axis=(1, 2)) > 0)
    assert len(changed) and changed.min() >= 3 * height // 4 - 2 and changed.max() <= 3 * height // 4 + 3
    assert AvatarRenderer(avatar, camera, orbit=True).body is None  # a novel view has no capture plate


def test_a_broken_body_plate_entry_is_refused(avatar_dir: Path, tmp_path: Path) -> None:
    cache, camera = _with_body(avatar_dir.parent / "actor", tmp_path / "actor")
    checkpoints = [avatar_dir.parent / f for f in ("vae.ckpt", "rerender.ckpt", "animator.ckpt")]
    exported = export_avatar(cache, tmp_path / "avatar", *checkpoints)
    (exported / "body_plates" / f"{camera}_mask.png").unlink()
    with pytest.raises(CacheError, match="incomplete.*_mask.png"):
        load_avatar(exported)
    info = json.loads((exported / "avatar.json").read_text())
    info["body_plates"][camera]["sway_from_pose"] = [[0.0, 0.0]]
    cv2.imwrite(str(exported / "body_plates" / f"{camera}_mask.png"), np.zeros((4, 4), np.uint8))
    (exported / "avatar.json").write_text(json.dumps(info))
    with pytest.raises(CacheError, match="body plate entry is malformed"):
        load_avatar(exported)


def _scene_cache(root: Path, s: dict[str, np.ndarray], clean_plate: np.ndarray) -> CaptureCache:
    cache = CaptureCache.create(root, fps=25.0, num_frames=FRAMES,
                                sequences=[SequenceRecord("train", 0, FRAMES - 1, "train")])
    cache.write_array(frames_array("cam0"), s["frames"], stage="test", per_frame=True)
    cache.write_array(clean_plate_array("cam0"), clean_plate, stage="test")
    return cache


def test_prepare_keeps_a_body_plate_only_where_it_explains_the_frames(swaying: dict[str, np.ndarray],
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``prepare``'s gate: a swaying torso gets its body plate; a torso held still is already in the clean plate,
    so a body plate would only add a layer: none, and the reason is given. (Selfie segmentation needs a real
    person: the scene's true silhouettes stand in for it.)"""
    lookup = {frame.tobytes(): person for frame, person in zip(swaying["frames"], swaying["person"], strict=True)}
    monkeypatch.setattr(body_plate, "segment", lambda frames: np.stack([lookup[f.tobytes()] for f in frames]))
    cache = _scene_cache(tmp_path / "swaying", swaying, swaying["backdrop"])
    found = body_plate._camera_body(cache, "cam0", swaying["faces"], np.arange(FRAMES), chunk=16)
    assert not isinstance(found, str), found
    body, sway, gain = found
    assert gain > 0.7 and sway.failed == 0 and body.coverage > 0.2

    still = dict(swaying)
    still["frames"] = swaying["frames"].copy()
    first = swaying["frames"][0]
    torso = translate(swaying["mask"], swaying["sways"][0], cv2.BORDER_CONSTANT) > 0.5
    still["frames"][:, torso] = first[torso]  # the same torso in every frame: the clean plate already shows it
    lookup.update({f.tobytes(): p for f, p in zip(still["frames"], swaying["person"], strict=True)})
    plate = swaying["backdrop"].copy()
    plate[torso] = first[torso]
    cache = _scene_cache(tmp_path / "still", still, plate)
    found = body_plate._camera_body(cache, "cam0", swaying["faces"], np.arange(FRAMES), chunk=16)
    assert isinstance(found, str) and "no better than the clean plate" in found
