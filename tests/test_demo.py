"""The one-command demo, end to end on the tiny synthetic actor with budgets of seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from avatar_lightning.cache import CaptureCache
from avatar_lightning.cli import main as cli_main
from avatar_lightning.video import count_frames, write_video
from tests.features_fixtures import moving_face_frames


def test_demo_runs_the_whole_chain_and_writes_a_report(synthetic_tiny: CaptureCache, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    shutil.copytree(synthetic_tiny.root, out / "actor")  # the same preset and seed: synth finds it up to date
    real_face = write_video(tmp_path / "astronaut.mp4", moving_face_frames(30, size=160), fps=25.0)
    code = cli_main(["demo", "--out", str(out), "--preset", "tiny", "--head-vae-minutes", "0.05",
                     "--rerender-minutes", "0.05", "--animator-steps", "20", "--drivers", str(real_face)])
    assert code == 0
    report = out / "report"
    for name in ("README.md", "scores.md", "scores.csv", "latent_mse.png", "per_frame_latent_mse.png",
                 "cross_identity.md", "cross_identity.json", "animation.mp4", "transfer.md", "transfer.json",
                 "transfer.png", "transfer_grid.md", "transfer_grid.json", "transfer_grid.png", "drive_astronaut.mp4",
                 "transfer_astronaut.json"):
        assert (report / name).is_file(), name
    grid = json.loads((report / "transfer_grid.json").read_text())
    assert len(grid) == 6 and all(set(cell["clips"]) == {"astronaut.mp4"} for cell in grid.values())
    synthetic = json.loads((report / "transfer.json").read_text())
    assert synthetic["frames_driver"] == synthetic["frames_avatar"] == CaptureCache(out / "driver_1").num_frames
    driver = CaptureCache(out / "driver_1")
    assert count_frames(report / "animation.mp4") == driver.num_frames
    cross = json.loads((report / "cross_identity.json").read_text())
    assert len(cross["runs"]) == 6 and "predict the training mean" in cross["baselines"]
    assert all(value >= 0 for value in cross["runs"].values())
    readme = (report / "README.md").read_text()
    assert "Time per step" in readme and "animator lstm_mediapipe_residual" in readme
    assert "Transfer, measured on the videos" in readme and "Transfer of every grid cell" in readme
    assert (out / "avatar" / "avatar.json").is_file()
