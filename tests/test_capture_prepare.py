"""``prepare`` end to end: mp4 files of a small synthetic capture in, a cache the whole chain reads out.

The synthetic actor's videos stand in for a studio's: ``prepare`` sees only the mp4 files, and its results are
scored against the truth the synthetic cache keeps. Bad input gets one clear message and leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar_lightning.cache import CaptureCache
from avatar_lightning.capture.calibration import save_calibration
from avatar_lightning.capture.evaluate import export_videos, score_prepared
from avatar_lightning.capture.prepare import PrepareOptions, prepare_capture
from avatar_lightning.cli import main
from avatar_lightning.synth.blendshapes import BLEND_SHAPE_NAMES
from avatar_lightning.synth.generate import SynthPreset, generate
from avatar_lightning.video import write_video

REPO_ROOT = Path(__file__).resolve().parents[1]
# Faces ~80 px high (MediaPipe needs that much); 3.2 s in all.
PRESET = SynthPreset(160, 160, 64, 25.0, (2.0,), 0.4, 0.8, 1.0, supersampling=1)
SPLIT = PrepareOptions(test_seconds=0.8, val_seconds=0.4, texture_size=64)


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> CaptureCache:
    return generate(tmp_path_factory.mktemp("capture") / "truth", preset=PRESET, seed=3, previews=False)


@pytest.fixture(scope="module")
def videos(truth: CaptureCache) -> list[Path]:
    return export_videos(truth, truth.root.parent / "videos")


@pytest.fixture(scope="module")
def mono(truth: CaptureCache, videos: list[Path]) -> CaptureCache:
    calibration = save_calibration(truth.cameras[:1], truth.root.parent / "frontal.json")
    # The shared rig alone: the synthetic actor moves nothing else, so this scores the tracker against its truth
    # (personal shapes could learn only FaceMesh's bias here; they are checked with the three-camera rig below).
    options = PrepareOptions(**{**SPLIT.__dict__, "calibration": str(calibration), "personal_shapes": 0})
    return prepare_capture([str(videos[0])], truth.root.parent / "mono", options)


def test_prepared_cache_holds_what_every_stage_reads(mono: CaptureCache, truth: CaptureCache) -> None:
    assert main(["inspect", str(mono.root)]) == 0
    n = truth.num_frames
    assert mono.num_frames == n and mono.fps == truth.fps
    assert [(s.name, s.split) for s in mono.sequences] == [("train", "train"), ("val", "val"), ("test", "test")]
    assert mono.sequences[-1].num_frames == 20 and mono.sequences[-1].last == n - 1
    assert mono.record("tracking/pose").shape == (n, 6)
    assert mono.manifest.meta["blend_shapes"] == list(BLEND_SHAPE_NAMES)
    assert mono.manifest.meta["prepare"]["personal_shapes"] is None
    blend = mono.read("tracking/blend_weights")
    assert blend.shape == (n, 17) and blend.min() >= 0 and blend.max() <= 1
    textures = mono.record("tracking/textures")
    assert textures.shape == (n, 64, 64, 3) and textures.dtype == "uint8"
    assert mono.read("cameras/cam0/clean_plate").shape == (160, 160, 3)
    face = truth.read("template/triangles")  # the face's topology is the synthetic actor's; the head shell follows
    assert np.array_equal(np.sort(mono.read("template/triangles")[: len(face)], 1), np.sort(face, 1))
    meta = mono.manifest.meta
    shell = meta["prepare"]["head_shell"]
    assert len(mono.read("template/vertices")) == len(truth.read("template/vertices")) + shell["vertices"]
    # The synthetic actor's frames show a skull with hair above the face: the fitted shell reaches up into it.
    assert max(shell["extents"]) > 1.2 and min(shell["extents"]) >= 1.0, shell
    # The synthetic actor has no torso below its head: no body plate, a reason, and the clean plate alone.
    assert meta["prepare"]["body_plates"]["cam0"]["body_plate"] is False, meta["prepare"]["body_plates"]
    assert meta["prepare"]["body_plates"]["cam0"]["why"] and not mono.names("cameras/cam0/body_*")
    assert meta["complete"] and not meta["prepare"]["calibration"]["estimated"]
    assert (mono.root / "report" / "grid.png").stat().st_size > 10_000
    assert not list(mono.root.parent.glob(".mono.prepare-*")), "a staging folder was left behind"


def test_prepared_tracking_matches_the_synthetic_truth(mono: CaptureCache, truth: CaptureCache) -> None:
    scores = score_prepared(mono, truth)
    assert scores["median_rotation_error_deg"] < 3.0, scores
    assert scores["median_reprojection_of_face_height"] < 0.02, scores
    assert scores["blend_correlation"]["jaw_open"] > 0.6, scores
    assert scores["texture_psnr_db"] > 12, scores
    # A frozen pose would score far worse: the error must respond to the truth's motion.
    frozen = np.broadcast_to(mono.read("tracking/pose").mean(0), (mono.num_frames, 6))
    from avatar_lightning.capture.evaluate import rotation_errors

    assert np.median(rotation_errors(frozen, truth.read("truth/pose"), np.eye(3))) > 2 * scores[
        "median_rotation_error_deg"]


def test_three_cameras_with_estimated_calibration(truth: CaptureCache, videos: list[Path], tmp_path: Path) -> None:
    cache = prepare_capture([str(v) for v in videos], tmp_path / "rig", SPLIT)
    report = cache.manifest.meta["prepare"]["calibration"]
    assert report["estimated"] and "bundle adjustment" in report["method"]
    assert np.allclose(cache.cameras[0].R, np.eye(3)) and not np.allclose(cache.cameras[1].R, np.eye(3))
    # The left diagonal camera sits to the image left of the frontal one (x < 0 in camera 0's frame).
    centre = -np.array(cache.cameras[1].R).T @ np.array(cache.cameras[1].t)
    assert centre[0] < -0.05
    assert score_prepared(cache, truth)["median_rotation_error_deg"] < 5.0
    # The 17 shared shapes first, then the actor's own, learnt from the training frames only: one pair per 50 of
    # them (50 here: 3.2 s less 0.8 s of test and 0.4 s of validation).
    names = cache.manifest.meta["blend_shapes"]
    train = cache.sequences[0].num_frames
    assert names == [*BLEND_SHAPE_NAMES, "personal_1+", "personal_1-"] and train // 50 == 1
    assert cache.manifest.meta["prepare"]["personal_shapes"]["frames"] == train
    blend = cache.read("tracking/blend_weights")
    assert blend.shape == (cache.num_frames, 19) and blend.min() >= 0 and blend.max() <= 1
    assert cache.read("template/blend_basis").shape[0] == 19


def test_the_chain_runs_on_a_prepared_cache(mono: CaptureCache, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "actor"
    shutil.copytree(mono.root, root)
    assert main(["features", "--cache", str(root), "--extractor", "mediapipe"]) == 0
    runs = tmp_path / "runs"
    base = ["fit", "--config", str(REPO_ROOT / "experiments" / "head_vae.yaml"),
            "--config", str(REPO_ROOT / "experiments" / "head_vae_tiny.yaml"),
            f"--data.init_args.cache_dir={root}", f"--trainer.default_root_dir={runs}",
            f"--trainer.logger.init_args.save_dir={runs}", "--trainer.enable_progress_bar=false",
            "--trainer.limit_val_batches=1", "--trainer.max_steps=4", "--trainer.val_check_interval=2"]
    assert main(base) == 0
    ckpt = next(runs.rglob("last.ckpt"))
    assert main(["encode", "--ckpt", str(ckpt), "--cache", str(root), "--name", "head_vae"]) == 0
    assert main(["render-mesh", "--ckpt", str(ckpt), "--cache", str(root), "--name", "head_vae"]) == 0
    cache = CaptureCache(root)
    assert cache.record("renders/head_vae/cam0").shape == (cache.num_frames, 160, 160, 3)
    coverage = cache.read("renders/head_vae/cam0.mask")
    assert coverage.mean() > 0.05, "the fitted mesh must land on the frames"


# ---------------------------------------------------------------------------------------------- bad input
def _prepare(tmp_path: Path, *videos: str, extra: tuple[str, ...] = ()) -> int:
    return main(["prepare", "--out", str(tmp_path / "out"), *[f"--video={v}" for v in videos], *extra])


def test_missing_and_corrupt_videos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _prepare(tmp_path, str(tmp_path / "none.mp4")) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 100)
    assert _prepare(tmp_path, str(tmp_path / "junk.mp4")) == 2
    assert "not a readable video" in capsys.readouterr().err
    assert _prepare(tmp_path, str(tmp_path / "junk.mp4"), extra=("--personal-shapes=-1",)) == 2
    assert "--personal-shapes must be 0 (the shared shapes alone) or more, got -1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_camera_without_a_face_is_named(tmp_path: Path, videos: list[Path], capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (80, 160, 160, 3), dtype=np.uint8)
    blank = write_video(tmp_path / "wall.mp4", noise, 25.0)
    assert _prepare(tmp_path, str(videos[0]), str(blank), extra=("--test-seconds=0.8", "--val-seconds=0.4")) == 2
    err = capsys.readouterr().err
    assert "wall.mp4" in err and "no face" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_cameras_of_different_length_and_a_too_short_clip(tmp_path: Path, videos: list[Path], truth: CaptureCache,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    short = write_video(tmp_path / "short.mp4", truth.read("cameras/frontal/frames", 0, 40), 25.0)
    assert _prepare(tmp_path, str(videos[0]), str(short)) == 2
    assert "differ in length" in capsys.readouterr().err
    assert _prepare(tmp_path, str(short), extra=("--test-seconds=1.2", "--val-seconds=0.4")) == 2
    assert "too short" in capsys.readouterr().err
    bad = tmp_path / "cams.json"
    bad.write_text("{}")
    assert _prepare(tmp_path, str(short), extra=(f"--calibration={bad}",)) == 2
    assert "cams.json" in capsys.readouterr().err


def test_an_existing_cache_is_never_replaced_without_overwrite(mono: CaptureCache, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    before = (mono.root / "manifest.json").read_text()
    code = main(["prepare", "--out", str(mono.root), "--video", str(mono.manifest.meta["sources"][0])])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (mono.root / "manifest.json").read_text() == before


def test_demo_prepares_a_real_capture_once(videos: list[Path], tmp_path: Path) -> None:
    from avatar_lightning.stages.demo import _actor

    actor = tmp_path / "actor"
    _actor(actor, "tiny", [str(videos[0])], overwrite=False)
    manifest = (actor / "manifest.json").stat().st_mtime_ns
    assert CaptureCache(actor).manifest.meta["generator"] == "avatar_lightning.capture"
    _actor(actor, "tiny", [str(videos[0])], overwrite=False)  # the same capture: reused, not redone
    assert (actor / "manifest.json").stat().st_mtime_ns == manifest


@pytest.mark.slow
def test_demo_runs_on_a_real_capture(shared_dir: Path, tmp_path: Path) -> None:
    """The README's `demo --capture` on the real anchor clip (minutes)."""
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--capture", str(shared_dir / "data" / "capture" / "anchor_71s.mp4"),
                 "--preset", "tiny", "--head-vae-minutes", "0.1", "--rerender-minutes", "0.1",
                 "--animator-steps", "20"])
    assert code == 0 and (out / "report" / "animation.mp4").stat().st_size > 0


@pytest.mark.shared
def test_real_grid_video_cameras_are_tracked(shared_dir: Path, tmp_path: Path) -> None:
    """The NeRSemble sample's three real cameras (regions of one grid video): every frame tracked or flagged."""
    grid = shared_dir / "data" / "capture" / "nersemble_074_grid.mp4"
    cameras = [f"{grid}@0,{y},247,360" for y in (0, 360, 720)]
    cache = prepare_capture(cameras, tmp_path / "nersemble", PrepareOptions(texture_size=64))
    meta = cache.manifest.meta["prepare"]
    assert meta["fit"]["frames"] == cache.num_frames == 184
    for name in ("cam0", "cam1", "cam2"):
        valid = cache.read(f"tracking/landmarks/{name}.valid")
        assert valid.sum() + meta["faces"][name]["frames_without_face"] == 184
        assert meta["fit"]["cameras"][name]["median_reprojection_of_face_height"] < 0.1


def test_a_failure_late_in_the_stage_leaves_nothing_behind(videos: list[Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    plate = tmp_path / "plate.png"
    cv2.imwrite(str(plate), np.zeros((160, 160, 3), np.uint8))
    # Two clean plates for one camera: found only after decoding, tracking and texturing.
    code = _prepare(tmp_path, str(videos[0]), extra=("--test-seconds=0.8", "--val-seconds=0.4", "--texture-size=32",
                                                     f"--clean-plate={plate}", f"--clean-plate={plate}"))
    assert code == 2 and "--clean-plate was given 2 times for 1 cameras" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_a_given_clean_plate_is_stored_as_it_is(videos: list[Path], truth: CaptureCache, tmp_path: Path) -> None:
    import cv2

    plate = truth.read("cameras/frontal/clean_plate")
    cv2.imwrite(str(tmp_path / "plate.png"), cv2.cvtColor(plate, cv2.COLOR_RGB2BGR))
    options = PrepareOptions(**{**SPLIT.__dict__, "texture_size": 32, "clean_plates": (str(tmp_path / "plate.png"),),
                                "head_shell": False})
    cache = prepare_capture([str(videos[0])], tmp_path / "out", options)
    np.testing.assert_array_equal(cache.read("cameras/cam0/clean_plate"), plate)
    # --no-head-shell: the template stops at the face oval, as the synthetic actor's
    assert cache.manifest.meta["prepare"]["head_shell"] is None
    assert cache.read("template/triangles").shape == truth.read("template/triangles").shape
    focal = cache.manifest.meta["prepare"]["calibration"]["focal_search"]  # no calibration: the focal was searched
    best = min(focal, key=focal.get)
    assert cache.cameras[0].K[0][0] == pytest.approx(float(best) * 160)


def test_frames_bigger_than_max_side_are_scaled_with_their_calibration_and_plate(
        truth: CaptureCache, videos: list[Path], tmp_path: Path) -> None:
    """A 160 px capture prepared at --max-side 96 with its full-size calibration and clean plate: the cache's camera
    is the file's scaled alike, and the tracking is as good as at full size (the frames, not the geometry, shrink)."""
    import cv2

    calibration = save_calibration(truth.cameras[:1], tmp_path / "frontal.json")
    plate = tmp_path / "plate.png"
    cv2.imwrite(str(plate), truth.read(f"cameras/{truth.cameras[0].name}/clean_plate")[..., ::-1])
    options = PrepareOptions(**{**SPLIT.__dict__, "calibration": str(calibration), "max_side": 96,
                                "clean_plates": (str(plate),)})
    cache = prepare_capture([str(videos[0])], tmp_path / "small", options)
    camera, full = cache.cameras[0], truth.cameras[0]
    assert (camera.width, camera.height) == (96, 96)
    np.testing.assert_allclose(np.array(camera.K)[:2], np.array(full.K)[:2] * 0.6, rtol=1e-6)
    assert cache.record("cameras/cam0/frames").shape == (truth.num_frames, 96, 96, 3)
    assert cache.manifest.meta["prepare"]["frames"]["scaled_from"] == [[160, 160]]
    scores = score_prepared(cache, truth)
    assert scores["median_rotation_error_deg"] < 3.0, scores
    assert scores["median_reprojection_of_face_height"] < 0.02, scores


def test_frames_without_a_face_are_said_and_never_taught(truth: CaptureCache, videos: list[Path], tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A clip whose face leaves the frame: prepare warns and marks those frames, and the head VAE and the re-render
    U-Net train on the others only (the animator masks them through its features' validity already)."""
    import logging

    from avatar_lightning.video import iter_frames
    from datamodules.head import HeadDataModule
    from datamodules.rerender import RerenderDataModule

    frames = np.stack(list(iter_frames(videos[0])))
    gone = slice(10, 40)  # 30 frames of the training part: an empty room
    frames[gone] = truth.read("cameras/frontal/clean_plate")
    clip = write_video(tmp_path / "leaves.mp4", frames, truth.fps)
    calibration = save_calibration(truth.cameras[:1], tmp_path / "frontal.json")
    with caplog.at_level(logging.WARNING):
        cache = prepare_capture([str(clip)], tmp_path / "leaves", PrepareOptions(
            **{**SPLIT.__dict__, "calibration": str(calibration)}))
    seen = cache.read("tracking/face_seen")
    assert seen.dtype == bool and not seen[gone].any() and seen[:10].all() and seen[45:].all()
    assert cache.manifest.meta["prepare"]["faces"]["frames_without_face"] == int((~seen).sum()) >= 30
    assert any("no face in" in r.message and "leave them out" in r.message for r in caplog.records), caplog.text
    head = HeadDataModule(str(cache.root))
    head.setup("fit")
    trained = set(head.datasets["train"].starts.tolist()) | set(head.datasets["val"].starts.tolist())
    assert trained and not trained & set(np.flatnonzero(~seen).tolist())
    head.setup("predict")
    assert len(head.datasets["predict"]) == cache.num_frames  # encode still gives every frame a latent
    everything = HeadDataModule(str(cache.root), faces_only=False)
    everything.setup("fit")
    assert len(everything.datasets["train"]) > len(head.datasets["train"])
    assert main(["render-mesh", "--cache", str(cache.root), "--textures", "tracking", "--name", "tracking"]) == 0
    rerender = RerenderDataModule(str(cache.root), run="tracking")
    rerender.setup("fit")
    used = {int(rerender.datasets["train"][i]["frame_index"]) for i in range(len(rerender.datasets["train"]))}
    assert used and not used & set(np.flatnonzero(~seen).tolist())
