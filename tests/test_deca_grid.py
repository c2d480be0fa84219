"""The paper's ablation grid on the paper's features, end to end (slow): DECA features of the tiny synthetic actor
through the real loading code, then ``fit`` of all nine DECA cells ``{mlp,cnn,lstm}_{expression,resnet,
resnet_residual}`` from their own experiment files, then ``compare``.

DECA's weights are random here (``random_deca_checkpoint``: the real ``deca_model.tar`` layout, loaded by the real
loader), so the features carry no expression and nothing is asserted about how well the cells do: only that every
cell trains on the features its experiment file names, with their true sizes, and scores finitely.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from avatar_lightning.cache import CaptureCache
from avatar_lightning.cli import main
from avatar_lightning.features.deca import EXPRESSION_DIM, FEATURE_SIZE
from avatar_lightning.models.animator import Animator
from avatar_lightning.models.head_vae import HeadVAE
from avatar_lightning.testing import save_lightning_checkpoint
from tests.features_fixtures import random_deca_checkpoint
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.slow

EXPERIMENTS = REPO_ROOT / "experiments"
CELLS = [f"{backbone}_{variant}" for backbone in ("mlp", "cnn", "lstm")
         for variant in ("expression", "resnet", "resnet_residual")]
DIMS = {"deca_resnet": FEATURE_SIZE, "deca_expression": EXPRESSION_DIM}  # 2048; 50 expression + 3 jaw
LATENT_DIM = 8


def _cell(name: str) -> dict:
    """What the cell's experiment file says: features, backbone, residual_dim."""
    config = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    args = config["model"]["init_args"]
    return {"features": args["features"], "backbone": args["backbone"], "residual_dim": args["residual_dim"]}


@pytest.fixture(scope="module")
def deca_actor(synthetic_tiny: CaptureCache, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny synthetic actor with latents from a (random) head VAE through ``encode``, and both DECA feature
    arrays through ``features --extractor deca --checkpoint`` from a checkpoint in DECA's own layout."""
    work = tmp_path_factory.mktemp("deca_grid")
    root = work / "actor"
    shutil.copytree(synthetic_tiny.root, root)
    cache = CaptureCache(root)
    torch.manual_seed(0)
    vae = save_lightning_checkpoint(
        HeadVAE(texture_size=cache.record("tracking/textures").shape[1],
                num_blend_shapes=cache.record("tracking/blend_weights").shape[1], latent_dim=LATENT_DIM, width=4,
                perceptual_weight=0.0, adversarial_weight=0.0),
        work / "head_vae.ckpt")
    assert main(["encode", "--ckpt", str(vae), "--cache", str(root)]) == 0
    checkpoint = random_deca_checkpoint(work / "deca")
    start = time.perf_counter()
    assert main(["features", "--cache", str(root), "--extractor", "deca", "--checkpoint", str(checkpoint),
                 "--no-progress"]) == 0
    return {"root": root, "work": work, "checkpoint": checkpoint, "extract_seconds": time.perf_counter() - start}


@pytest.fixture(scope="module")
def deca_grid(deca_actor: dict, request: pytest.FixtureRequest) -> dict:
    """Every DECA cell trained and scored through the real CLI, from its own experiment file at the tiny budget."""
    runs = deca_actor["work"] / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: a second thread only adds synchronisation
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    seconds = {}
    for name in CELLS:
        start = time.perf_counter()
        code = main([
            "fit", "--config", str(EXPERIMENTS / f"{name}.yaml"), "--config", str(EXPERIMENTS / "animator_tiny.yaml"),
            f"--data.init_args.cache_dir={deca_actor['root']}", f"--trainer.logger.init_args.save_dir={runs}",
            f"--trainer.default_root_dir={runs}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ])
        assert code == 0, name
        seconds[name] = time.perf_counter() - start
    print(f"\nDECA extraction {deca_actor['extract_seconds']:.1f} s; fit per cell: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    return {"runs": runs, "seconds": seconds}


def _run_dir(runs: Path, cell: dict) -> Path:
    return runs / cell["features"] / f"{cell['backbone']}_residual{cell['residual_dim']}"


def test_grid_cells_are_the_papers() -> None:
    cells = [_cell(name) for name in CELLS]
    assert {(c["backbone"], c["features"]) for c in cells} == {
        (b, f) for b in ("mlp", "cnn", "lstm") for f in ("deca_expression", "deca_resnet")}
    for name, cell in zip(CELLS, cells, strict=True):
        assert (cell["residual_dim"] > 0) == name.endswith("_residual"), name
        assert cell["features"] == ("deca_expression" if name.endswith("_expression") else "deca_resnet"), name


def test_deca_features_come_from_the_real_loader(deca_actor: dict) -> None:
    cache = CaptureCache(deca_actor["root"])
    for name, dim in DIMS.items():
        x, valid = cache.read(f"features/{name}"), cache.read(f"features/{name}.valid")
        assert x.shape == (cache.num_frames, dim) and x.dtype == np.float32 and np.isfinite(x).all()
        assert valid.mean() > 0.9  # FaceMesh finds the synthetic face (the crop is DECA's box, not the centre)
        assert (x[valid].std(0) > 0).any()  # frames differ
        meta = cache.manifest.meta["features"][name]
        assert meta["extractor"] == "deca" and meta["checkpoint"] == str(deca_actor["checkpoint"])


@pytest.mark.parametrize("name", CELLS)
def test_every_deca_cell_trains_on_its_features_and_scores(deca_grid: dict, deca_actor: dict, name: str) -> None:
    cell = _cell(name)
    run = _run_dir(deca_grid["runs"], cell)
    scores = json.loads((run / "scores.json").read_text())
    assert {k: scores["model"][k] for k in cell} == cell
    for metric in ("latent_mse", "blend_mse"):  # blend_mse: decoded through the head VAE `encode` recorded
        assert scores["metrics"][metric] is not None and math.isfinite(scores["metrics"][metric]), metric
        for baseline in ("mean", "nearest_neighbour"):
            assert math.isfinite(scores["baselines"][baseline]["metrics"][metric]), (baseline, metric)
    assert scores["frames"] == 40 and scores["frames_scored"] > 30  # the tiny preset's 1.6 s held-out sequence
    assert scores["baselines"]["nearest_neighbour"]["label"] == f"nearest neighbour ({cell['features']})"

    # The trained model: the cell's features at their true size, normalised with that array's training frames.
    model = Animator.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    dim = DIMS[cell["features"]]
    assert model.hparams.features == cell["features"] and model.hparams.backbone == cell["backbone"]
    assert model.hparams.feature_dim == dim and model.net.inputs.features.in_features == dim
    assert model.hparams.latent_dim == LATENT_DIM
    cache = CaptureCache(deca_actor["root"])
    rows = np.concatenate([np.arange(s.first, s.last + 1) for s in cache.sequences_in("train")])
    x, valid = cache.read(f"features/{cell['features']}")[rows], cache.read(f"features/{cell['features']}.valid")[rows]
    np.testing.assert_allclose(model.feature_mean.numpy(), x[valid].mean(0), rtol=1e-3, atol=1e-4)
    # The residual cells have the paper's residual encoder; the others none.
    assert model.hparams.residual_dim == cell["residual_dim"]
    if name.endswith("_residual"):
        assert cell["residual_dim"] > 0 and model.net.residual is not None
        assert model.net.residual.residual_dim == cell["residual_dim"]
        assert model.net.inputs.residual.in_features == cell["residual_dim"]
    else:
        assert model.net.residual is None and model.net.inputs.residual is None


def test_compare_tables_the_deca_grid(deca_grid: dict, tmp_path: Path) -> None:
    report = tmp_path / "report"
    assert main(["compare", str(deca_grid["runs"]), "--out", str(report)]) == 0
    table = (report / "scores.md").read_text()
    for name in CELLS:
        cell = _cell(name)
        label = f"{cell['backbone']} · {cell['features']}" + (" · residual" if cell["residual_dim"] else "")
        residual = "yes" if cell["residual_dim"] else "no"
        assert f"| {label} | {cell['backbone']} | {cell['features']} | {residual} |" in table, label
    for features in DIMS:
        assert f"baseline: nearest neighbour ({features})" in table
        assert f"baseline: predict the training mean ({features})" in table
    lines = (report / "scores.csv").read_text().splitlines()
    assert sum(line.startswith("run,") for line in lines) == len(CELLS)
    for file in ("latent_mse.png", "blend_mse.png", "per_frame_latent_mse.png"):
        assert (report / file).stat().st_size > 0


def test_evaluate_scores_the_deca_grid_and_drives_it_with_a_synthetic_identity(deca_grid: dict, deca_actor: dict,
                                                                              tmp_path: Path) -> None:
    """``evaluate`` over the nine cells: the driver's DECA features are remade with the checkpoint the actor's
    manifest records (no --checkpoint, no $AVATAR_LIGHTNING_DECA), and the cell is chosen on validation."""
    from avatar_lightning.synth.generate import generate

    driver = generate(tmp_path / "driver", preset="tiny", identity=1, style="speaking", previews=False)
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--runs", str(deca_grid["runs"]), "--cache", str(deca_actor["root"]), "--out", str(out),
                 "--synthetic-drivers", str(driver.root)]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    runs = [c for c in result["candidates"] if c["kind"] == "run"]
    assert len(runs) == len(CELLS)
    assert result["chosen"]["label"] == min(runs, key=lambda c: c["metrics"]["val_latent_mse"])["label"]
    assert CaptureCache(driver.root).manifest.meta["features"]["deca_resnet"]["checkpoint"] == str(
        deca_actor["checkpoint"])
    for candidate in result["candidates"]:
        if candidate["kind"] != "reference":
            assert math.isfinite(candidate["metrics"]["xid_relative_error"]), candidate["label"]
    assert "no image metrics: pass --rerender" in (out / "evaluation.md").read_text()
