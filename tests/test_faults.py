"""The fault suite: bad input to every command gives one clear message and exit code 2, nothing that looks
complete is written, untrusted files never run code, killed runs leave the previous state and resume exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_lightning.cache import CacheError, CaptureCache, SequenceRecord
from avatar_lightning.cli import main
from avatar_lightning.testing import make_tiny_cache, save_lightning_checkpoint, tiny_camera
from tests.helpers import REPO_ROOT

WINDOW_CONFIG = str(REPO_ROOT / "tests" / "configs" / "window_regression.yaml")

pytestmark = pytest.mark.faults


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """The command as a user types it (a fresh process: exit code and stderr exactly as they see them)."""
    return subprocess.run([sys.executable, "-m", "avatar_lightning", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def run_python(code: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------- untrusted files
class Planted:
    """A pickle whose ``__reduce__`` creates ``marker`` when unpickled: proof of code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    path = tmp_path / "planted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"payload": Planted(marker)}, "global_step": 0}, path)
    assert not marker.exists()
    return path, marker


def _avatar_with(avatar_dir: Path, tmp_path: Path, piece: str, replacement: Path) -> Path:
    copy = tmp_path / "avatar"
    shutil.copytree(avatar_dir, copy)
    shutil.copyfile(replacement, copy / piece)
    return copy


@pytest.mark.parametrize("command", ["encode", "render-mesh", "export --head-vae", "export --rerender",
                                     "export --animator", "animate (avatar folder)", "fit --ckpt_path",
                                     "test --ckpt_path"])
def test_a_planted_pickle_never_runs(command: str, planted: tuple[Path, Path], avatar_dir: Path,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = planted
    actor, sources = avatar_dir.parent / "actor", avatar_dir.parent
    checkpoints = {"--head-vae": sources / "vae.ckpt", "--rerender": sources / "rerender.ckpt",
                   "--animator": sources / "animator.ckpt"}
    if command in ("encode", "render-mesh"):
        argv = [command, "--ckpt", str(path), "--cache", str(actor), "--name", "planted"]
    elif command.startswith("export"):
        checkpoints[command.split()[1]] = path
        argv = ["export", "--cache", str(actor), "--out", str(tmp_path / "out"),
                *(str(v) for pair in checkpoints.items() for v in pair)]
    elif command.startswith("animate"):
        folder = _avatar_with(avatar_dir, tmp_path, "head_vae.ckpt", path)
        argv = ["animate", "--avatar", str(folder), "--driving", str(tmp_path / "absent.mp4"),
                "--out", str(tmp_path / "out.mp4")]
    else:
        cache = make_tiny_cache(tmp_path / "cache")
        argv = [command.split()[0], "--config", WINDOW_CONFIG, f"--data.init_args.cache_dir={cache.root}",
                f"--trainer.default_root_dir={tmp_path / 'runs'}", f"--trainer.logger.init_args.save_dir={tmp_path}",
                f"--ckpt_path={path}"]
    code = main(argv)
    err = capsys.readouterr().err
    assert not marker.exists(), f"{command} executed the pickle"
    assert code == 2, err
    assert "refused to load" in err and "could run code" in err, err
    assert "Traceback" not in err


def test_the_deca_loader_refuses_a_planted_pickle(planted: tuple[Path, Path]) -> None:
    from avatar_lightning.features.deca import DecaCheckpointError, load_deca_encoder

    path, marker = planted
    with pytest.raises(DecaCheckpointError, match="cannot be loaded safely"):
        load_deca_encoder(path)
    assert not marker.exists()


@pytest.mark.parametrize("escape", ["../outside.ckpt", "/etc/passwd", "clean_plates/../../x.png"])
def test_avatar_json_cannot_point_outside_the_folder(avatar_dir: Path, tmp_path: Path, escape: str) -> None:
    from avatar_lightning.avatar import load_avatar

    folder = tmp_path / "avatar"
    shutil.copytree(avatar_dir, folder)
    info = json.loads((folder / "avatar.json").read_text())
    if escape.startswith("clean_plates"):
        camera = next(iter(info["files"]["clean_plates"]))
        info["files"]["clean_plates"][camera] = escape
    else:
        info["files"]["rerender"] = escape
    (folder / "avatar.json").write_text(json.dumps(info))
    shutil.copyfile(avatar_dir / "rerender.ckpt", tmp_path / "outside.ckpt")  # a real file there: still refused
    with pytest.raises(CacheError, match="outside the avatar folder"):
        load_avatar(folder)


# ---------------------------------------------------------------------------------------------- outputs guarded
def test_animate_never_overwrites_its_driving_video_or_any_file(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    driving = tmp_path / "driving.mp4"
    driving.write_bytes(b"the user's only copy")
    assert main(["animate", "--driving", str(driving), "--avatar", str(tmp_path), "--out", str(driving),
                 "--overwrite"]) == 2
    assert "is the driving video itself" in capsys.readouterr().err
    other = tmp_path / "earlier.mp4"
    other.write_bytes(b"an earlier result")
    assert main(["animate", "--driving", str(driving), "--avatar", str(tmp_path), "--out", str(other)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert driving.read_bytes() == b"the user's only copy" and other.read_bytes() == b"an earlier result"


def test_a_failed_rerun_of_a_named_run_keeps_the_earlier_one(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cache = make_tiny_cache(tmp_path / "cache")
    argv = ["fit", "--config", WINDOW_CONFIG, f"--data.init_args.cache_dir={cache.root}",
            f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.logger.init_args.name=cell", "--trainer.logger.init_args.version=lstm_residual0",
            "--trainer.enable_progress_bar=false"]
    assert main(argv) == 0
    run = tmp_path / "cell" / "lstm_residual0"
    before = {name: (run / name).read_bytes() for name in ("config.yaml", "metrics.csv")}
    assert main([*argv, "--model.init_args.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "move or delete that folder" in err
    assert {name: (run / name).read_bytes() for name in before} == before


def test_export_refuses_a_head_vae_other_than_the_one_that_encoded(avatar_dir: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from avatar_lightning.avatar.latents import record_latent_source
    from avatar_lightning.models.head_vae import HeadVAE

    sources = avatar_dir.parent
    actor = tmp_path / "actor"
    shutil.copytree(sources / "actor", actor)
    record_latent_source(CaptureCache(actor), "head_vae", sources / "vae.ckpt")
    vae = HeadVAE.load_from_checkpoint(sources / "vae.ckpt", weights_only=True)
    torch.manual_seed(1)
    other = save_lightning_checkpoint(HeadVAE(**dict(vae.hparams)), tmp_path / "other_vae.ckpt")  # same size
    argv = ["export", "--cache", str(actor), "--rerender", str(sources / "rerender.ckpt"),
            "--animator", str(sources / "animator.ckpt")]
    assert main([*argv, "--head-vae", str(other), "--out", str(tmp_path / "a")]) == 2
    assert "is not the head VAE that encoded latents/head_vae" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.*"))
    assert main([*argv, "--head-vae", str(sources / "vae.ckpt"), "--out", str(tmp_path / "b")]) == 0


# ---------------------------------------------------------------------------------------------- NaN, truncation
def test_the_cache_refuses_to_write_nan_and_keeps_the_previous_array(tiny_cache: CaptureCache) -> None:
    good = tiny_cache.read("latents/toy")
    bad = good.copy()
    bad[3, 1] = np.nan
    with pytest.raises(CacheError, match="1 of 60 rows hold NaN or Inf"):
        tiny_cache.write_array("latents/toy", bad, stage="test", per_frame=True)
    bad[3, 1] = np.inf
    with pytest.raises(CacheError, match="nothing was written"):
        tiny_cache.write_array("latents/new", bad, stage="test", per_frame=True)
    np.testing.assert_array_equal(CaptureCache(tiny_cache.root).read("latents/toy"), good)
    assert not tiny_cache.has("latents/new") and not list(tiny_cache.root.rglob("*.tmp"))
    landmarks = np.full((tiny_cache.num_frames, 3), np.nan, np.float32)  # NaN marks "no face" here, by contract
    tiny_cache.write_array("tracking/landmarks/front", landmarks, stage="test", per_frame=True)


@pytest.fixture
def actor_with_nan(synthetic_tiny: CaptureCache, tmp_path: Path) -> CaptureCache:
    root = tmp_path / "actor"
    shutil.copytree(synthetic_tiny.root, root)
    blend = np.load(root / "tracking" / "blend_weights.npy", mmap_mode="r+")  # edited in place: header unchanged
    blend[17, 2] = np.nan
    blend.flush()
    return CaptureCache(root)


def test_nan_in_a_cached_array_stops_training_encoding_and_inspect(actor_with_nan: CaptureCache, avatar_dir: Path,
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = str(actor_with_nan.root)
    assert main(["inspect", root]) == 2
    err = capsys.readouterr().err
    assert "tracking/blend_weights" in err and "1 of 200 rows hold NaN or Inf (first: row 17)" in err
    assert main(["fit", "--config", str(REPO_ROOT / "experiments" / "head_vae.yaml"),
                 "--config", str(REPO_ROOT / "experiments" / "head_vae_tiny.yaml"),
                 f"--data.init_args.cache_dir={root}",
                 f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
                 "--trainer.max_steps=2"]) == 2
    assert "hold NaN or Inf" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))
    assert main(["encode", "--ckpt", str(avatar_dir.parent / "vae.ckpt"), "--cache", root]) == 2
    assert "hold NaN or Inf" in capsys.readouterr().err
    assert not CaptureCache(root).names("latents/*")


def test_inspect_names_every_broken_file(tiny_cache: CaptureCache, capsys: pytest.CaptureFixture[str]) -> None:
    root = tiny_cache.root
    path = root / "features" / "toy.npy"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    (root / "latents" / "toy.npy").unlink()  # listed, missing
    assert main(["inspect", str(root)]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "toy.npy: unreadable .npy file" in err and "missing on disk" in err


@pytest.mark.parametrize(("manifest", "message"), [
    ("{not json", "not valid JSON"),
    (json.dumps({"schema_version": 99, "fps": 25, "num_frames": 1}), "newer than this avatar_lightning"),
    ("[]", "manifest must be a JSON object"),
])
def test_a_bad_manifest_is_named(tiny_cache: CaptureCache, manifest: str, message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tiny_cache.root / "manifest.json").write_text(manifest)
    for argv in (["inspect", str(tiny_cache.root)], ["features", "--cache", str(tiny_cache.root), "--extractor",
                                                     "mediapipe"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "manifest.json" in err and "Traceback" not in err


def test_features_without_any_face_fail_and_keep_the_previous_features(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cache = CaptureCache.create(tmp_path / "blank", fps=25.0, num_frames=6,
                                sequences=[SequenceRecord("all", 0, 5, "test")],
                                cameras=[tiny_camera("front", 64, 64)])
    cache.write_array("cameras/front/frames", np.full((6, 64, 64, 3), 128, np.uint8), stage="test", per_frame=True)
    previous = np.ones((6, 1434), np.float32)
    cache.write_array("features/mediapipe", previous, stage="test", per_frame=True)
    assert main(["features", "--cache", str(cache.root), "--extractor", "mediapipe", "--no-progress"]) == 2
    assert "no face was found in any of the 6 frames" in capsys.readouterr().err
    np.testing.assert_array_equal(CaptureCache(cache.root).read("features/mediapipe"), previous)
    assert not CaptureCache(cache.root).has("features/mediapipe.valid")


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_a_missing_ckpt_path_is_one_line(command: str, tiny_cache: CaptureCache, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--config", WINDOW_CONFIG, f"--data.init_args.cache_dir={tiny_cache.root}",
                 f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
                 f"--ckpt_path={tmp_path / 'nope.ckpt'}"]) == 2
    err = capsys.readouterr().err
    assert "nope.ckpt does not exist" in err and "Traceback" not in err


def test_tracebacks_only_with_debug(tmp_path: Path) -> None:
    plain = run_cli("inspect", str(tmp_path / "absent"))
    assert plain.returncode == 2 and "does not exist" in plain.stderr and "Traceback" not in plain.stderr
    for result in (run_cli("inspect", str(tmp_path / "absent"), "--debug"),
                   run_cli("inspect", str(tmp_path / "absent"), env={"AVATAR_LIGHTNING_DEBUG": "1"})):
        assert result.returncode != 0 and "Traceback" in result.stderr and "CacheError" in result.stderr


# ---------------------------------------------------------------------------------------------- killed runs
def test_a_killed_synth_leaves_the_previous_cache_and_reruns(synthetic_tiny: CaptureCache, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "actor"
    shutil.copytree(synthetic_tiny.root, out)
    killed = run_python(f"""
        import os, signal
        from avatar_lightning.synth.generate import generate
        def progress(stage, done, total):
            if stage.startswith("camera"):
                os.kill(os.getpid(), signal.SIGKILL)
        generate({str(out)!r}, preset="tiny", seed=1, overwrite=True, progress=progress)
    """)
    assert killed.returncode == -9, killed.stderr
    cache = CaptureCache(out)
    assert cache.manifest.meta["seed"] == 0 and cache.manifest.meta["complete"] is True
    assert main(["inspect", str(out)]) == 0
    assert "left by interrupted runs" in capsys.readouterr().out
    cache.set_meta(complete=False)  # what a synth killed by an older version left at --out
    assert main(["inspect", str(out)]) == 2
    assert "incomplete: avatar_lightning.synth did not finish" in capsys.readouterr().err
    assert main(["synth", "--out", str(out), "--preset", "tiny", "--no-preview"]) == 0  # recovers, no --overwrite
    assert CaptureCache(out).manifest.meta["complete"] is True


def test_a_killed_encode_keeps_the_previous_latents(avatar_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    actor = tmp_path / "actor"
    shutil.copytree(avatar_dir.parent / "actor", actor)
    checkpoint = str(avatar_dir.parent / "vae.ckpt")
    assert main(["encode", "--ckpt", checkpoint, "--cache", str(actor), "--batch-size", "32"]) == 0
    before = CaptureCache(actor).read("latents/head_vae")
    killed = run_python(f"""
        import os, signal
        from avatar_lightning.models.head_vae import HeadVAE
        from avatar_lightning.cli import main
        calls = []
        original = HeadVAE.encode
        def encode(self, *args):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *args) * 0 + 7
        HeadVAE.encode = encode
        main(["encode", "--ckpt", {checkpoint!r}, "--cache", {str(actor)!r}, "--batch-size", "32"])
    """)
    assert killed.returncode == -9, killed.stderr
    np.testing.assert_array_equal(CaptureCache(actor).read("latents/head_vae"), before)
    assert main(["inspect", str(actor)]) == 0
    assert ".head_vae." in capsys.readouterr().out  # the killed writer's temporary file is named, not listed


def test_two_features_runs_on_one_cache_keep_both_arrays(synthetic_tiny: CaptureCache, tmp_path: Path) -> None:
    root = tmp_path / "actor"
    shutil.copytree(synthetic_tiny.root, root)
    processes = [subprocess.Popen([sys.executable, "-m", "avatar_lightning", "features", "--cache", str(root),
                                   "--extractor", extractor, "--no-progress"], cwd=REPO_ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for extractor in ("mediapipe", "tracked_blend")]
    results = [(p.wait(timeout=600), *p.communicate()) for p in processes]
    for code, _, err in results:
        assert code == 0, err
        # a newcomer's terminal: MediaPipe's native start-up chatter and protobuf's notice are gone
        for noise in ("XNNPACK", "absl::InitializeLog", "GetPrototype", "inference_feedback_manager", "Tip:",
                      "GPU available", "TPU available"):
            assert noise not in err, err
    names = CaptureCache(root).names("features/*")
    assert {"features/mediapipe", "features/mediapipe.valid", "features/tracked_blend",
            "features/tracked_blend.valid"} <= set(names)
    assert set(CaptureCache(root).manifest.meta["features"]) >= {"mediapipe", "tracked_blend"}


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    from avatar_lightning.video import write_video

    previous = os.umask(0o022)
    try:
        video = write_video(tmp_path / "v.mp4", np.zeros((2, 16, 16, 3), np.uint8), fps=25.0)
        cache = make_tiny_cache(tmp_path / "cache")
    finally:
        os.umask(previous)
    assert video.stat().st_mode & 0o777 == 0o644
    assert (cache.root / "manifest.json").stat().st_mode & 0o777 == 0o644
    assert (cache.root / "latents" / "toy.npy").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------------------------- resume
ANIMATOR_FIT = ["fit", "--config", "experiments/animator.yaml", "--model.init_args.features=expression",
                "--model.init_args.hidden=16", "--model.init_args.lr_decay_every=7", "--data.init_args.batch_size=16",
                "--trainer.max_steps=60", "--trainer.val_check_interval=10", "--trainer.log_every_n_steps=1",
                "--trainer.enable_progress_bar=false", "--model.init_args.test_after_fit=false"]


def resume_matches(fit: list[str], cache: Path, tmp_path: Path, kill_at: int, run: str) -> dict[str, float]:
    """Fit unkilled into ``a``; fit into ``b`` killed (SIGKILL) at step ``kill_at``, resumed from its last.ckpt.
    Returns the figures the closing note reports; asserts the two runs agree."""
    def fit_into(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*fit, f"--data.init_args.cache_dir={cache}", f"--trainer.default_root_dir={out}",
                       f"--trainer.logger.init_args.save_dir={out}", *extra, timeout=900)

    assert fit_into(tmp_path / "a").returncode == 0
    kill = json.dumps({"class_path": "tests.helpers.KillAtStep", "init_args": {"step": kill_at}})
    assert fit_into(tmp_path / "b", f"--trainer.callbacks+={kill}").returncode == -9
    last = tmp_path / "b" / run / "checkpoints" / "last.ckpt"
    resumed_from = torch.load(last, weights_only=True)["global_step"]
    resumed = fit_into(tmp_path / "b", f"--ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr
    a, b = (torch.load(tmp_path / x / run / "checkpoints" / "last.ckpt", weights_only=True) for x in "ab")
    assert a["global_step"] == b["global_step"]
    assert a["lr_schedulers"] == b["lr_schedulers"]
    weight_diff = max((a["state_dict"][k].float() - b["state_dict"][k].float()).abs().max().item()
                      for k in a["state_dict"])
    optimiser_diff = max((x.float() - y.float()).abs().max().item()
                         for sa, sb in zip(a["optimizer_states"], b["optimizer_states"], strict=True)
                         for pa, pb in zip(sa["state"].values(), sb["state"].values(), strict=True)
                         for x, y in zip(pa.values(), pb.values(), strict=True) if isinstance(x, torch.Tensor))
    curves = [(tmp_path / x / run / "metrics.csv").read_text().splitlines() for x in "ab"]
    assert curves[0] == curves[1]  # the same rows, in the same order: one curve, as if never killed
    assert weight_diff <= 1e-6 and optimiser_diff <= 1e-6
    figures = {"resumed_from_step": resumed_from, "final_step": a["global_step"], "max_weight_diff": weight_diff,
               "max_optimiser_state_diff": optimiser_diff, "metrics_rows": len(curves[0]) - 1}
    print(f"resume of {run} killed at step {kill_at}: {figures}")  # the release note's figures (pytest -s)
    return figures


def test_a_checkpoint_killed_while_written_leaves_the_previous_one(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    from avatar_lightning.cli import build_lightning_cli
    from callbacks.resume import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, last)

    def dies_half_way(self: object, checkpoint: dict, path: Path, storage_options: object = None) -> None:
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # as a kill would stop it: mid-write

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, last)
    monkeypatch.undo()
    assert torch.load(last, weights_only=True)["global_step"] == 1
    # and it is the writer every `fit` uses
    cli = build_lightning_cli(["--config", "experiments/animator.yaml", f"--trainer.default_root_dir={tmp_path}",
                               "--trainer.logger=false"], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_killed_animator_fit_resumes_exactly(tmp_path: Path) -> None:
    from avatar_lightning.testing import make_expression_cache

    cache, _ = make_expression_cache(tmp_path / "cache")
    figures = resume_matches(ANIMATOR_FIT, cache.root, tmp_path, kill_at=35, run="expression/lstm_residual0")
    assert figures["resumed_from_step"] == 30 and figures["final_step"] == 60


@pytest.mark.slow
@pytest.mark.parametrize("model", ["head_vae", "rerender"])
def test_a_killed_fit_of_the_image_models_resumes_exactly(model: str, synthetic_tiny: CaptureCache,
                                                           tmp_path: Path) -> None:
    from avatar_lightning.stages.render_mesh import main as render_mesh

    root = tmp_path / "actor"
    shutil.copytree(synthetic_tiny.root, root)
    if model == "rerender":
        assert render_mesh(["--cache", str(root), "--textures", "tracking", "--name", "tracking"]) == 0
    fit = ["fit", "--config", f"experiments/{model}.yaml", "--config", f"experiments/{model}_tiny.yaml",
           # both runs end on a validation, so both end on a saved checkpoint: Lightning's on_train_end saves
           # an extra last.ckpt only in a resumed run (its "last saved" flag is not in the checkpoint)
           "--trainer.max_steps=32", "--trainer.val_check_interval=8", "--trainer.log_every_n_steps=1",
           "--trainer.enable_progress_bar=false", "--trainer.logger.init_args.version=run",
           *(["--model.init_args.adversarial_start=4"] if model == "head_vae" else [])]
    figures = resume_matches(fit, root, tmp_path, kill_at=18, run=f"{model}/run")
    # the head VAE steps both optimisers every batch: its validations fall at global steps 16 and 32, the
    # re-render U-Net's at 8, 16, 24, 32; the kill at 18 falls just after a validation at 16 for both
    assert figures["resumed_from_step"] == 16 and figures["final_step"] == 32


# ---------------------------------------------------------------------------------------------- killed stages
def _kill_in(setup: str, call: str) -> subprocess.CompletedProcess[str]:
    """Run ``call`` in a fresh process after ``setup`` (which arranges a SIGKILL mid-way): a real kill, no cleanup."""
    return run_python("import os, signal\n" + textwrap.dedent(setup) + "\n" + textwrap.dedent(call))


def _leftovers_named(root: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``inspect`` passes the surviving cache and lists what the killed run left; returns that listing."""
    capsys.readouterr()
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "left by interrupted runs" in out, out
    return out.split("left by interrupted runs", 1)[1]


def test_a_killed_ingest_leaves_the_previous_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avatar_lightning.capture.ingest import ingest_video
    from avatar_lightning.video import write_video
    from tests.features_fixtures import moving_face_frames

    first = write_video(tmp_path / "first.mp4", moving_face_frames(8, size=64), fps=25.0)
    second = write_video(tmp_path / "second.mp4", moving_face_frames(24, size=64), fps=25.0)
    out = tmp_path / "cache"
    before = ingest_video(first, out).read("cameras/video/frames")
    killed = _kill_in("""
        def progress(what, done, total):
            if what == "write frames" and done >= 8:
                os.kill(os.getpid(), signal.SIGKILL)
    """, f"""
        from avatar_lightning.capture.ingest import ingest_video
        ingest_video({str(second)!r}, {str(out)!r}, overwrite=True, chunk=4, progress=progress)
    """)
    assert killed.returncode == -9, killed.stderr
    np.testing.assert_array_equal(CaptureCache(out).read("cameras/video/frames"), before)
    assert ".cache.ingest-" in _leftovers_named(out, capsys)
    assert main(["ingest", "--video", str(second), "--out", str(out), "--overwrite"]) == 0  # and it runs again
    assert CaptureCache(out).num_frames == 24


def test_a_killed_prepare_leaves_the_previous_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avatar_lightning.capture.prepare import prepare_capture
    from avatar_lightning.video import write_video
    from tests.features_fixtures import moving_face_frames

    video = write_video(tmp_path / "actor.mp4", moving_face_frames(40, size=128), fps=25.0)
    out = tmp_path / "actor"
    before = prepare_capture([str(video)], out).manifest
    killed = _kill_in("""
        def progress(what, done, total):
            if what == "UV textures":
                os.kill(os.getpid(), signal.SIGKILL)
    """, f"""
        from avatar_lightning.capture.prepare import PrepareOptions, prepare_capture
        prepare_capture([{str(video)!r}], {str(out)!r}, PrepareOptions(overwrite=True), progress=progress)
    """)
    assert killed.returncode == -9, killed.stderr
    assert CaptureCache(out).manifest == before
    assert ".actor.prepare-" in _leftovers_named(out, capsys)
    # killed before it ever finished: there is no cache, and inspect says what the kill left beside it
    fresh = tmp_path / "fresh"
    killed = _kill_in("""
        def progress(what, done, total):
            if what == "UV textures":
                os.kill(os.getpid(), signal.SIGKILL)
    """, f"""
        from avatar_lightning.capture.prepare import prepare_capture
        prepare_capture([{str(video)!r}], {str(fresh)!r}, progress=progress)
    """)
    assert killed.returncode == -9, killed.stderr
    assert main(["inspect", str(fresh)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and ".fresh.prepare-" in err and "interrupted" in err


def test_a_killed_features_run_keeps_the_previous_features(avatar_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    actor = tmp_path / "actor"
    shutil.copytree(avatar_dir.parent / "actor", actor)
    before = CaptureCache(actor).read("features/mediapipe")
    killed = _kill_in("""
        from callbacks.cache_writer import CacheWriter
        original = CacheWriter.write_on_batch_end
        calls = []
        def write_on_batch_end(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *args, **kwargs)
        CacheWriter.write_on_batch_end = write_on_batch_end
    """, f"""
        from avatar_lightning.cli import main
        main(["features", "--cache", {str(actor)!r}, "--extractor", "mediapipe", "--relative", "none",
              "--batch-size", "8", "--no-progress"])
    """)
    assert killed.returncode == -9, killed.stderr
    np.testing.assert_array_equal(CaptureCache(actor).read("features/mediapipe"), before)
    assert ".mediapipe." in _leftovers_named(actor, capsys)


def test_a_killed_render_mesh_keeps_the_previous_renders(avatar_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    actor = tmp_path / "actor"
    shutil.copytree(avatar_dir.parent / "actor", actor)
    assert main(["render-mesh", "--cache", str(actor), "--textures", "tracking", "--name", "tracking",
                 "--batch-size", "64"]) == 0
    before = CaptureCache(actor).read("renders/tracking/frontal")
    killed = _kill_in("""
        import avatar_lightning.avatar.mesh_renders as stage
        original = stage.render_textured
        calls = []
        def render_textured(*args, **kwargs):
            calls.append(1)
            if len(calls) == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        stage.render_textured = render_textured
    """, f"""
        from avatar_lightning.cli import main
        main(["render-mesh", "--cache", {str(actor)!r}, "--textures", "tracking", "--name", "tracking",
              "--batch-size", "8"])
    """)
    assert killed.returncode == -9, killed.stderr
    np.testing.assert_array_equal(CaptureCache(actor).read("renders/tracking/frontal"), before)
    assert ".frontal." in _leftovers_named(actor, capsys)
