"""The compare stage: table, CSV and plots from fake scores.json files, discovery, and clear errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from avatar_lightning.cache import CacheError
from avatar_lightning.stages.compare import main

FRAMES = 12


def _curve(level: float, gap: int | None = None) -> list[float | None]:
    values: list[float | None] = [level * (1 + 0.1 * math.sin(i)) for i in range(FRAMES)]
    if gap is not None:
        values[gap] = None
    return values


def _baselines(features: str, mean_level: float, nn_level: float, blend: float | None) -> dict[str, Any]:
    def block(label: str, level: float) -> dict[str, Any]:
        return {
            "label": label,
            "metrics": {"latent_mse": level, "blend_mse": blend, "jitter": 0.0, "jitter_target": 0.005,
                        "jitter_ratio": 0.0},
            "per_frame": {"latent_mse": _curve(level, gap=3)},
        }

    return {"mean": block("predict the training mean", mean_level),
            "nearest_neighbour": block(f"nearest neighbour ({features})", nn_level)}


def _write_run(root: Path, name: str, features: str, backbone: str, residual_dim: int, latent: float,
               blend: float | None, ratio: float) -> Path:
    run_dir = root / features / name
    run_dir.mkdir(parents=True)
    scores = {
        "label": f"{backbone} · {features}" + (" · residual" if residual_dim else ""),
        "run_dir": str(run_dir),
        "model": {"backbone": backbone, "features": features, "residual_dim": residual_dim},
        "split": "test",
        "frames": FRAMES,
        "frames_scored": FRAMES - 1,
        "metrics": {"latent_mse": latent, "blend_mse": blend, "jitter": 0.004, "jitter_target": 0.005,
                    "jitter_ratio": ratio},
        "per_frame": {"latent_mse": _curve(latent, gap=3),
                      **({"blend_mse": _curve(blend, gap=3)} if blend is not None else {})},
        "baselines": _baselines(features, mean_level=0.5, nn_level=0.05 if features == "mediapipe" else 0.08,
                                blend=None if blend is None else 0.02),
    }
    (run_dir / "scores.json").write_text(json.dumps(scores))
    return run_dir


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """Three runs over two feature sets; the deca run has no head VAE (blend_mse null)."""
    root = tmp_path / "runs" / "animator"
    _write_run(root, "lstm_residual16", "mediapipe", "lstm", 16, latent=0.012, blend=0.0031, ratio=0.8)
    _write_run(root, "tcn", "mediapipe", "tcn", 0, latent=0.02, blend=0.0025, ratio=1.3)
    _write_run(root, "lstm", "deca", "lstm", 0, latent=0.009, blend=None, ratio=1.05)
    return root


def _table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("| ").split(" | ")] for line in lines[1:]]


def test_table_csv_and_plots(grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compare"
    runs = [str(p) for p in sorted(grid.glob("*/*"))]
    assert main([*runs, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    markdown = (out / "scores.md").read_text()
    assert markdown in stdout and "wrote:" in stdout

    rows = _table_rows(markdown)
    labels = [r[0] for r in rows]
    assert labels[:3] == ["lstm · deca", "lstm · mediapipe · residual", "tcn · mediapipe"]  # latent_mse ascending
    assert sorted(labels[3:]) == sorted([
        "baseline: predict the training mean (deca)", "baseline: nearest neighbour (deca)",
        "baseline: predict the training mean (mediapipe)", "baseline: nearest neighbour (mediapipe)",
    ])
    by_label = {r[0]: r for r in rows}
    # columns: label, backbone, features, residual, frames scored, latent_mse, blend_mse, jitter_ratio
    assert by_label["lstm · deca"][5] == "**0.009**"
    assert by_label["lstm · deca"][6] == "n/a"
    assert by_label["tcn · mediapipe"][6] == "**0.0025**"
    assert by_label["lstm · mediapipe · residual"][3:5] == ["yes", str(FRAMES - 1)]
    assert by_label["tcn · mediapipe"][3] == "no"
    assert not any("**" in r[7] for r in rows)  # jitter_ratio is best near 1, never bolded
    assert sum("**" in r[5] for r in rows) == 1
    assert "best near 1.0" in markdown and "split `test`" in markdown
    assert all(str(p / "scores.json") in markdown for p in grid.glob("*/*"))

    with (out / "scores.csv").open(newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [r["kind"] for r in records] == ["run"] * 3 + ["baseline"] * 4
    assert {"latent_mse", "blend_mse", "jitter", "jitter_target", "jitter_ratio", "source"} <= set(records[0])
    deca = next(r for r in records if r["label"] == "lstm · deca")
    assert deca["blend_mse"] == "" and float(deca["latent_mse"]) == pytest.approx(0.009)
    assert deca["source"].endswith("scores.json") and Path(deca["source"]).is_file()

    for name in ["latent_mse", "blend_mse", "jitter_ratio", "per_frame_latent_mse", "per_frame_blend_mse"]:
        png = out / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000, name
    assert not (out / "per_frame_jitter_ratio.png").exists()  # no per-frame data for it
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_recursive_discovery_and_selected_metrics(grid: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    assert main([str(grid.parent), "--out", str(out), "--metrics", "jitter_ratio"]) == 0
    rows = _table_rows((out / "scores.md").read_text())
    assert len(rows) == 3 + 4 and len(rows[0]) == 6
    assert [r[0] for r in rows[:3]] == ["lstm · deca", "lstm · mediapipe · residual", "tcn · mediapipe"]  # by |r - 1|
    assert sorted(p.name for p in out.glob("*.png")) == ["jitter_ratio.png"]


def test_a_scores_file_and_its_folder_count_once(grid: Path, tmp_path: Path) -> None:
    run = grid / "deca" / "lstm"
    out = tmp_path / "compare"
    assert main([str(run), str(run / "scores.json"), "--out", str(out)]) == 0
    assert len(_table_rows((out / "scores.md").read_text())) == 1 + 2


def test_no_scores_is_a_helpful_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(CacheError, match="python -m avatar_lightning test") as err:
        main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert str(tmp_path / "empty") in str(err.value)
    with pytest.raises(CacheError, match="does not exist"):
        main([str(tmp_path / "absent"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ["{not json", json.dumps({"label": "x"}), json.dumps([1, 2])])
def test_malformed_scores_name_the_file(tmp_path: Path, content: str) -> None:
    bad = tmp_path / "run" / "scores.json"
    bad.parent.mkdir()
    bad.write_text(content)
    with pytest.raises(CacheError, match="scores.json") as err:
        main([str(bad.parent), "--out", str(tmp_path / "out")])
    assert str(bad) in str(err.value)


def test_unknown_metric_is_a_usage_error(grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(grid), "--out", str(tmp_path / "out"), "--metrics", "latent_mse,psnr"])
    assert exit_info.value.code == 2 and "psnr" in capsys.readouterr().err
