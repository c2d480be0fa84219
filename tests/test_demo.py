"""The one-command demo, end to end on the tiny synthetic actor with budgets of seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avatar_lightning.cache import CaptureCache
from avatar_lightning.evaluation.candidates import MEAN_LABEL
from avatar_lightning.evaluation.cross_identity import STANDARD_DRIVERS
from avatar_lightning.video import count_frames, write_video
from tests.features_fixtures import moving_face_frames
from tests.helpers import REPO_ROOT


def test_demo_runs_the_whole_chain_and_writes_a_report(synthetic_tiny: CaptureCache, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    shutil.copytree(synthetic_tiny.root, out / "actor")  # the same preset and seed: synth finds it up to date
    real_face = write_video(tmp_path / "astronaut.mp4", moving_face_frames(30, size=160), fps=25.0)
    # as a user runs it (a fresh process): the terminal shows our lines and Lightning's, not third-party notices
    result = subprocess.run([sys.executable, "-m", "avatar_lightning", "demo", "--out", str(out), "--preset", "tiny",
                             "--head-vae-minutes", "0.05", "--rerender-minutes", "0.05", "--animator-steps", "20",
                             "--drivers", str(real_face)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200,
                            env={**os.environ, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    terminal = result.stderr
    for noise in ("LightningCLI's args parameter", "is not writable", "Tip:", "XNNPACK", "GetPrototype",
                  "smaller than the logging interval",
                  "absl::InitializeLog", "Traceback"):
        assert noise not in terminal, (noise, terminal[-3000:])
    assert terminal.count("LPIPS perceptual loss is off") <= 1  # said once, not once per model
    assert terminal.count("GPU available:") == 1  # Lightning's run summary for the first fit only
    report = out / "report"
    for name in ("README.md", "scores.md", "scores.csv", "latent_mse.png", "per_frame_latent_mse.png",
                 "evaluation.md", "evaluation.json", "psnr_face.png", "cross_identity.md", "cross_identity_shapes.png",
                 "animation.mp4", "transfer.md", "transfer.json",
                 "transfer.png", "transfer_grid.md", "transfer_grid.json", "transfer_grid.png", "drive_astronaut.mp4",
                 "transfer_astronaut.json"):
        assert (report / name).is_file(), name
    grid = json.loads((report / "transfer_grid.json").read_text())
    assert len(grid) == 6 and all(set(cell["clips"]) == {"astronaut.mp4"} for cell in grid.values())
    synthetic = json.loads((report / "transfer.json").read_text())
    assert synthetic["frames_driver"] == synthetic["frames_avatar"] == CaptureCache(out / "driver_1").num_frames
    driver = CaptureCache(out / "driver_1")
    assert count_frames(report / "animation.mp4") == driver.num_frames
    evaluation = json.loads((report / "evaluation.json").read_text())
    runs = [c for c in evaluation["candidates"] if c["kind"] == "run"]
    assert len(runs) == 6 and len(evaluation["drivers"]) == len(STANDARD_DRIVERS)
    chosen = min(runs, key=lambda c: c["metrics"]["val_latent_mse"])  # validation chooses, never test
    assert evaluation["chosen"]["label"] == chosen["label"]
    assert json.loads((out / "avatar" / "avatar.json").read_text())["source_cache"]  # the chosen cell exported
    for candidate in evaluation["candidates"]:
        for metric in ("latent_mse", "psnr_face", "ssim_face"):
            assert np.isfinite(candidate["metrics"][metric]), (candidate["label"], metric)
        if candidate["kind"] != "reference":
            assert candidate["metrics"]["xid_relative_error"] > 0
    mean = next(c for c in evaluation["candidates"] if c["label"] == MEAN_LABEL)
    assert mean["metrics"]["xid_relative_error"] == pytest.approx(1.0, abs=1e-6)
    readme = (report / "README.md").read_text()
    assert f"({chosen['label']}), chosen as the cell with the lowest latent MSE on the validation" in readme
    assert "Time per step" in readme and "animator lstm_mediapipe_residual" in readme
    assert "Transfer, measured on the videos" in readme and "Transfer of every grid cell" in readme
    assert (out / "avatar" / "avatar.json").is_file()


@pytest.mark.slow
def test_the_demo_at_its_default_budgets_every_learned_cell_beats_both_baselines(tmp_path: Path) -> None:
    """The README's main job as a user runs it (preset demo, default budgets, ~12 min on 2 cores): every learned
    cell beats predicting the mean and the nearest neighbour on the held-out test sequence (latents, decoded
    blend shapes, the rendered face) and driven by the five synthetic identities."""
    from avatar_lightning.stages.demo import main as demo_main

    assert demo_main(["--out", str(tmp_path / "demo")]) == 0
    evaluation = json.loads((tmp_path / "demo" / "report" / "evaluation.json").read_text())
    runs = [c for c in evaluation["candidates"] if c["kind"] == "run"]
    baselines = [c for c in evaluation["candidates"] if c["kind"] == "baseline"]
    assert len(runs) == 6 and len(baselines) == 2
    for run in runs:
        for baseline in baselines:
            for metric in ("latent_mse", "blend_mse", "xid_relative_error"):
                assert run["metrics"][metric] < baseline["metrics"][metric], (run["label"], baseline["label"], metric)
            assert run["metrics"]["psnr_face"] > baseline["metrics"]["psnr_face"], (run["label"], baseline["label"])


def test_capture_size_is_checked_and_a_cache_of_another_size_is_prepared_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``--capture-size`` below 64 px is refused by name; a real capture prepared earlier is reused only when it was
    prepared from the same videos at the same size."""
    from types import SimpleNamespace

    import avatar_lightning.capture.prepare as prepare
    from avatar_lightning.stages import demo

    with pytest.raises(SystemExit):
        demo.main(["--capture", "clip.mp4", "--capture-size", "32"])
    assert "--capture-size must be at least 64 pixels, got 32" in capsys.readouterr().err
    calls = []
    monkeypatch.setattr(prepare, "prepare_capture", lambda videos, out, options: calls.append(options.max_side))
    actor = tmp_path / "actor"
    actor.mkdir()
    (actor / "manifest.json").write_text("{}")
    meta = {"complete": True, "sources": ["clip.mp4"], "prepare": {"frames": {"max_side": 256}}}
    monkeypatch.setattr(demo, "CaptureCache", lambda _: SimpleNamespace(manifest=SimpleNamespace(meta=meta)))
    demo._actor(actor, "demo", ["clip.mp4"], overwrite=False, capture_size=256)
    assert calls == []  # the same videos at the same size: reused
    demo._actor(actor, "demo", ["clip.mp4"], overwrite=False, capture_size=512)
    demo._actor(actor, "demo", ["other.mp4"], overwrite=False, capture_size=256)
    assert calls == [512, 256]
