"""Export an avatar folder, load it back, animate it from a driving video (with faceless frames)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from avatar_lightning.avatar import Avatar, export_avatar, load_avatar
from avatar_lightning.avatar.animate import animate_video
from avatar_lightning.avatar.renderer import AvatarRenderer, orbit_cameras
from avatar_lightning.cache import CacheError, CaptureCache
from avatar_lightning.cli import main as cli_main
from avatar_lightning.features.head_pose import HeadRotationTracker
from avatar_lightning.video import count_frames, probe_video, write_video
from tests.features_fixtures import blank, face_image, moving_face_frames, rotate_scale
from tests.helpers import AVATAR_LATENT_DIM as LATENT_DIM


@pytest.fixture
def driving_video(tmp_path: Path) -> Path:
    """Another face (the astronaut, moving) for 30 frames, with no face at all in frames 10..14."""
    frames = moving_face_frames(30, size=96)
    frames[10:15] = blank(96)
    return write_video(tmp_path / "driving.mp4", frames, fps=25.0)


def test_export_writes_everything_animate_needs(avatar_dir: Path, synthetic_tiny: CaptureCache) -> None:
    avatar = load_avatar(avatar_dir)
    assert isinstance(avatar, Avatar)
    assert (avatar.features, avatar.extractor, avatar.relative) == ("mediapipe", "mediapipe", "sequence")
    assert [c.name for c in avatar.cameras] == [c.name for c in synthetic_tiny.cameras]
    for camera in synthetic_tiny.cameras:
        np.testing.assert_array_equal(avatar.plates[camera.name],
                                      synthetic_tiny.read(f"cameras/{camera.name}/clean_plate"))
    torch.testing.assert_close(avatar.mesh.vertices, torch.from_numpy(synthetic_tiny.read("template/vertices")))
    assert avatar.animator.hparams.latent_dim == avatar.head_vae.hparams.latent_dim == LATENT_DIM
    assert not list(avatar_dir.parent.glob(".avatar*"))  # no staging folder left behind
    with pytest.raises(CacheError, match="exists; pass --overwrite"):
        export_avatar(synthetic_tiny, avatar_dir, *(avatar_dir / f for f in
                                                    ("head_vae.ckpt", "rerender.ckpt", "animator.ckpt")))


def test_animate_renders_every_frame_and_counts_the_faceless(avatar_dir: Path, driving_video: Path,
                                                             tmp_path: Path) -> None:
    avatar = load_avatar(avatar_dir)
    out = tmp_path / "out.mp4"
    report = animate_video(driving_video, avatar, out, work=tmp_path / "work", with_driving=True,
                           show_progress=False, chunk=8)
    assert report.frames == count_frames(out) == 30
    assert report.frames_without_face >= 5  # the blank frames (held by interpolated features), still rendered
    info = probe_video(out)
    assert info.fps == pytest.approx(25.0)
    camera = avatar.cameras[0]
    assert (info.height, info.width) == (camera.height, camera.width + round(96 * camera.height / 96))
    assert report.avatar_region == (info.width - camera.width, 0, camera.width, camera.height)
    assert report.avatar_spec == f"{out}@{info.width - camera.width},0,{camera.width},{camera.height}"
    assert not list(tmp_path.glob(".out*"))  # the writer renamed its temporary file


def test_animate_scores_its_own_transfer(avatar_dir: Path, driving_video: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import json

    out = tmp_path / "scored.mp4"
    code = cli_main(["animate", "--driving", str(driving_video), "--avatar", str(avatar_dir), "--out", str(out),
                     "--side-by-side", "--score", "--no-progress"])
    assert code == 0
    scores = json.loads(out.with_suffix(".transfer.json").read_text())
    assert scores["frames_driver"] == scores["frames_avatar"] == 30  # the avatar half, frame for frame
    assert 0 <= scores["summary"]["face_fraction"] <= 1 and out.with_suffix(".transfer.png").is_file()
    assert "mouth_open" in capsys.readouterr().out


def test_a_large_driving_video_is_ingested_at_a_bounded_size(avatar_dir: Path, tmp_path: Path) -> None:
    """Only the face crop and the side-by-side panel use the frames: 4K or 1080p would cost disk, not quality."""
    frames = np.concatenate([moving_face_frames(6, size=96), np.zeros((6, 96, 64, 3), np.uint8)], axis=2)
    video = write_video(tmp_path / "wide.mp4", frames, fps=25.0)  # 160 x 96
    avatar = load_avatar(avatar_dir)
    animate_video(video, avatar, tmp_path / "small.mp4", work=tmp_path / "small", show_progress=False,
                  driving_size=80)
    assert CaptureCache(tmp_path / "small" / "driving").record("cameras/video/frames").shape == (6, 48, 80, 3)
    animate_video(video, avatar, tmp_path / "full.mp4", work=tmp_path / "full", show_progress=False,
                  driving_size=160)  # never scaled up or down when it fits
    assert CaptureCache(tmp_path / "full" / "driving").record("cameras/video/frames").shape == (6, 96, 160, 3)
    with pytest.raises(SystemExit):
        cli_main(["animate", "--driving", str(video), "--avatar", str(avatar_dir), "--out", str(tmp_path / "x.mp4"),
                  "--driving-size", "8"])


def test_animate_command_orbits(avatar_dir: Path, driving_video: Path, tmp_path: Path) -> None:
    out = tmp_path / "orbit.mp4"
    code = cli_main(["animate", "--driving", str(driving_video), "--avatar", str(avatar_dir), "--out", str(out),
                     "--orbit", "--no-progress"])
    assert code == 0 and count_frames(out) == 30


def test_animate_follows_the_driving_head(avatar_dir: Path, driving_video: Path, tmp_path: Path) -> None:
    out = tmp_path / "posed.mp4"
    code = cli_main(["animate", "--driving", str(driving_video), "--avatar", str(avatar_dir), "--out", str(out),
                     "--pose", "driving", "--no-progress", "--chunk", "7"])
    assert code == 0 and count_frames(out) == 30


def test_head_rotation_follows_an_in_plane_turn() -> None:
    """A face photo turned in the image plane by known angles: the tracked rotation is about the camera axis."""
    face = face_image(192)
    holds = [0, 10, -8]
    frames = np.stack([rotate_scale(face, angle, 1.0) for angle in holds for _ in range(4)])
    tracker = HeadRotationTracker(smoothing=0.0)
    rotations = Rotation.from_matrix(tracker(frames)).as_rotvec(degrees=True)
    tracker.close()
    for k, angle in enumerate(holds):
        settled = rotations[4 * k + 3]
        # cv2 turns counter-clockwise on screen: with y pointing down that is a negative turn about z
        assert settled[2] == pytest.approx(-angle, abs=2.5), rotations
        assert np.abs(settled[:2]).max() < 3.0
    assert tracker.frames_without_face == 0


def test_a_still_driving_head_keeps_the_default_pose(avatar_dir: Path) -> None:
    renderer = AvatarRenderer(load_avatar(avatar_dir))
    poses = renderer.driven_pose(np.repeat(np.eye(3)[None], 2, axis=0))
    torch.testing.assert_close(poses, renderer.pose.expand(2, 6), rtol=1e-5, atol=1e-6)


def test_orbit_keeps_distance_and_looks_at_the_head(avatar_dir: Path) -> None:
    camera = load_avatar(avatar_dir).cameras[0]
    centre = torch.tensor([0.0, 0.02, 0.0])
    cams = orbit_cameras(camera, centre, list(range(100)), fps=25.0)
    eyes = -(cams.R.transpose(1, 2) @ cams.t[..., None])[..., 0]
    start = -(torch.tensor(camera.R).T @ torch.tensor(camera.t))
    distances = (eyes - centre).norm(dim=1)
    torch.testing.assert_close(distances, (start - centre).norm().expand(100), rtol=1e-4, atol=1e-5)
    forward = torch.nn.functional.normalize(centre - eyes, dim=1)
    torch.testing.assert_close(cams.R[:, 2], forward, rtol=1e-4, atol=1e-5)  # the optical axis hits the head
    a, b = (eyes - centre)[:, [0, 2]], (start - centre)[[0, 2]]
    swing = torch.rad2deg(torch.atan2(a[:, 0] * b[1] - a[:, 1] * b[0], a @ b))  # signed angle from the start view
    assert swing.max() - swing.min() == pytest.approx(60.0, abs=1.0)


@pytest.mark.parametrize("piece", ["rerender.ckpt", "template.npz", "avatar.json", "clean_plates"])
def test_an_incomplete_avatar_names_the_missing_piece(avatar_dir: Path, tmp_path: Path, piece: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(avatar_dir, broken)
    target = broken / piece
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CacheError, match=piece.split(".")[0]):
        load_avatar(broken)


def test_a_foreign_checkpoint_is_refused(avatar_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(avatar_dir, broken)
    shutil.copyfile(broken / "head_vae.ckpt", broken / "rerender.ckpt")
    with pytest.raises(CacheError, match="rerender.ckpt is not a Rerenderer checkpoint"):
        load_avatar(broken)


def test_driving_features_of_another_size_are_refused(avatar_dir: Path, tmp_path: Path) -> None:
    from avatar_lightning.avatar.animate import animate_cache

    frames = moving_face_frames(12, size=64)
    cache = CaptureCache.create(tmp_path / "driving", fps=25.0, num_frames=12,
                                sequences=[], cameras=[load_avatar(avatar_dir).cameras[0]])
    cache.write_array(f"cameras/{cache.cameras[0].name}/frames", frames, stage="test", per_frame=True)
    cache.write_array("features/mediapipe", np.zeros((12, 10), np.float32), stage="test", per_frame=True)
    cache.write_array("features/mediapipe.valid", np.ones(12, bool), stage="test", per_frame=True)
    with pytest.raises(CacheError, match="10 values per frame but the avatar's animator was trained on 1434"):
        animate_cache(load_avatar(avatar_dir), CaptureCache(cache.root), tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


def test_retarget_shapes_the_mesh_with_the_drivers_own_weights(avatar_dir: Path, driving_video: Path,
                                                                tmp_path: Path) -> None:
    from avatar_lightning.avatar.animate import animate_cache

    out = tmp_path / "retarget.mp4"
    code = cli_main(["animate", "--driving", str(driving_video), "--avatar", str(avatar_dir), "--out", str(out),
                     "--expression", "retarget", "--work", str(tmp_path / "work"), "--no-progress"])
    assert code == 0 and count_frames(out) == 30
    driving = CaptureCache(tmp_path / "work" / "driving")
    assert driving.read("features/tracked_blend").shape == (30, 17)
    avatar = load_avatar(avatar_dir)
    renderer = AvatarRenderer(avatar)
    z = torch.zeros(2, LATENT_DIM)
    open_jaw = torch.zeros(2, 17)
    open_jaw[:, 0] = 1.0  # jaw_open
    assert not np.array_equal(renderer.render(z, [0, 1]), renderer.render(z, [0, 1], blend_weights=open_jaw))
    animate_video(driving_video, avatar, tmp_path / "plain.mp4", work=tmp_path / "plain", show_progress=False)
    plain = CaptureCache(tmp_path / "plain" / "driving")  # the animator's features only
    with pytest.raises(CacheError, match="no features/tracked_blend for --expression retarget"):
        animate_cache(avatar, plain, tmp_path / "x.mp4", expression="retarget")
    # A rig with more shapes than the driver's (a real actor's personal shapes after the shared ones): the driver's
    # weights move the first ones and the rest stay at rest. More weights than shapes cannot be placed.
    fewer = np.asarray(driving.read("features/tracked_blend"))[:, :12]
    plain.write_array("features/tracked_blend", fewer, stage="test", per_frame=True)
    animate_cache(avatar, CaptureCache(plain.root), tmp_path / "fewer.mp4", expression="retarget")
    assert count_frames(tmp_path / "fewer.mp4") == 30
    plain.write_array("features/tracked_blend", np.zeros((30, 18), np.float32), stage="test", per_frame=True)
    with pytest.raises(CacheError, match="18 tracked blend weights but the avatar's head has 17 blend shapes"):
        animate_cache(avatar, CaptureCache(plain.root), tmp_path / "more.mp4", expression="retarget")


# ---------------------------------------------------------------------------------------------- precision
def test_precision_choice_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from avatar_lightning.avatar import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert precision.resolve_precision("auto", cpu) == "32"  # emulated bf16 is slower: not chosen
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert precision.resolve_precision("auto", cpu) == "bf16"
    assert precision.resolve_precision("32", cpu) == "32" and precision.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="CUDA"):
        precision.resolve_precision("16", cpu)
    with pytest.raises(ValueError, match="one of auto, 32, bf16, 16"):
        precision.resolve_precision("fp8", cpu)


def test_bf16_renders_the_float32_frames_within_a_few_levels(avatar_dir: Path) -> None:
    """bf16 is a speed setting: the same latents give the float32 frames within a few 8-bit levels (PSNR > 35 dB),
    and the frames do differ (autocast really ran): a bf16 path that silently stayed float32 fails here."""
    avatar = load_avatar(avatar_dir)
    z = torch.randn(4, LATENT_DIM, generator=torch.Generator().manual_seed(0))
    exact = AvatarRenderer(avatar, precision="32").render(z, list(range(4))).astype(np.float64)
    fast = AvatarRenderer(avatar, precision="bf16").render(z, list(range(4))).astype(np.float64)
    mse = np.mean((exact - fast) ** 2)
    assert 0 < mse and 10 * np.log10(255**2 / mse) > 35


def test_animate_refuses_a_precision_the_device_cannot_run(avatar_dir: Path, driving_video: Path,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as error:
        cli_main(["animate", "--driving", str(driving_video), "--avatar", str(avatar_dir), "--out",
                  str(tmp_path / "out.mp4"), "--device", "cpu", "--precision", "16"])
    assert error.value.code == 2 and "CUDA" in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()


def test_the_onnxruntime_backend_renders_the_torch_frames(avatar_dir: Path) -> None:
    """The exported avatar through ONNX Runtime (head VAE decoder and U-Net) gives PyTorch's frames: within one
    8-bit level (float32 both, only the order of the sums differs)."""
    pytest.importorskip("onnxruntime")
    avatar = load_avatar(avatar_dir)
    z = torch.randn(3, LATENT_DIM, generator=torch.Generator().manual_seed(1))
    reference = AvatarRenderer(avatar).render(z, [0, 1, 2]).astype(int)
    onnx = AvatarRenderer(avatar, backend="onnxruntime").render(z, [0, 1, 2]).astype(int)
    assert np.abs(reference - onnx).max() <= 1
    with pytest.raises(ValueError, match="float32"):
        AvatarRenderer(avatar, precision="bf16", backend="onnxruntime")
