"""The animator: residual encoder, backbones, sequence and streaming prediction, scoring, the tiny grid."""

from __future__ import annotations

import json
import shutil
from itertools import product
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from avatar_lightning.avatar.latents import record_latent_source
from avatar_lightning.cache import CacheError, CaptureCache
from avatar_lightning.cli import build_lightning_cli
from avatar_lightning.cli import main as cli_main
from avatar_lightning.models.animator import Animator, masked_mse
from avatar_lightning.models.head_vae import HeadVAE
from avatar_lightning.nets.animator import AnimatorNet, ResidualEncoder
from avatar_lightning.scoring import (
    mean_baseline,
    nearest_neighbour_baseline,
    score_sequences,
    second_difference_magnitude,
)
from avatar_lightning.testing import make_expression_cache, save_lightning_checkpoint
from datamodules.animator import AnimatorDataModule
from tests.helpers import REPO_ROOT

EXPERIMENTS = REPO_ROOT / "experiments"


# ---------------------------------------------------------------------------------------------- networks
def test_residual_encoder_is_the_papers_cnn() -> None:
    encoder = ResidualEncoder(latent_dim=6, residual_dim=4, channels=10)
    layers = list(encoder.layers)
    assert len(layers) == 12
    for i in range(4):
        conv, act, norm = layers[3 * i : 3 * i + 3]
        assert isinstance(conv, torch.nn.Conv1d) and conv.kernel_size == (5,) and conv.padding == (2,)
        assert isinstance(act, torch.nn.LeakyReLU) and act.negative_slope == pytest.approx(0.01)
        assert isinstance(norm, torch.nn.BatchNorm1d)
    z = torch.randn(5, 8, 6)
    out = encoder(z)
    assert out.shape == (5, 4)
    torch.testing.assert_close(out, encoder.layers(z.transpose(1, 2)).mean(dim=2))  # average over the 8 frames


def test_inference_uses_a_zero_residual() -> None:
    torch.manual_seed(0)
    net = AnimatorNet(feature_dim=7, latent_dim=3, backbone="mlp", hidden=16, residual_dim=4).eval()
    x, z = torch.randn(2, 8, 7), torch.randn(2, 8, 3)
    without_target = net(x)
    torch.testing.assert_close(without_target, net.animate(x, torch.zeros(2, 4)))
    assert not torch.allclose(net(x, z), without_target)  # during training the target does reach the backbone
    # The residual is concatenated to every frame's features ahead of the first linear layer.
    residual = torch.randn(2, 4)
    concatenated = torch.cat([x, residual[:, None, :].expand(-1, 8, -1)], dim=-1)
    weight = torch.cat([net.inputs.features.weight, net.inputs.residual.weight], dim=1)
    first_layer = torch.nn.functional.leaky_relu(concatenated @ weight.T + net.inputs.features.bias, 0.01)
    torch.testing.assert_close(net.animate(x, residual), net.backbone(first_layer))


@pytest.mark.parametrize("backbone", ["mlp", "cnn", "lstm"])
def test_backbone_temporal_reach(backbone: str) -> None:
    """MLP: frame-wise; LSTM: causal; CNN: symmetric context of the window."""
    torch.manual_seed(0)
    net = AnimatorNet(feature_dim=5, latent_dim=3, backbone=backbone, hidden=16).eval()
    x = torch.randn(1, 8, 5)
    changed = x.clone()
    changed[0, 4] += 1.0
    moved = (net(changed) - net(x)).abs().sum(dim=-1)[0] > 1e-7
    expected = {
        "mlp": [t == 4 for t in range(8)],
        "lstm": [t >= 4 for t in range(8)],
        "cnn": [True] * 8,
    }[backbone]
    assert moved.tolist() == expected
    assert net(torch.randn(3, 11, 5)).shape == (3, 11, 3)


def test_unknown_backbone_and_wrong_feature_size() -> None:
    with pytest.raises(ValueError, match="unknown animator backbone"):
        Animator(backbone="transformer")
    net = AnimatorNet(feature_dim=7, latent_dim=3)
    with pytest.raises(ValueError, match="6 values per frame; this animator takes 7"):
        net(torch.randn(1, 8, 6))


def test_masked_mse_ignores_invalid_frames() -> None:
    y, z = torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)
    y[0, 1] = 100.0  # a faceless frame's garbage
    valid = torch.ones(2, 4, dtype=torch.bool)
    valid[0, 1] = False
    assert masked_mse(y, z, valid).item() == 0.0
    y[1, 2] = 2.0
    assert masked_mse(y, z, valid).item() == pytest.approx(4.0 / 7)


# ---------------------------------------------------------------------------------------------- prediction
def _built_animator(backbone: str = "lstm", window: int = 8, residual_dim: int = 0,
                    linear_skip: bool = False) -> Animator:
    torch.manual_seed(0)
    model = Animator(backbone=backbone, hidden=16, window=window, feature_dim=5, latent_dim=3,
                     residual_dim=residual_dim, linear_skip=linear_skip).eval()
    model.feature_mean.normal_()
    model.latent_std.uniform_(0.5, 2.0)
    if linear_skip:  # a trained backbone's output is not zero
        torch.nn.init.normal_(model.net.backbone.out.weight)
    return model


@pytest.mark.parametrize(("backbone", "residual_dim", "linear_skip"),
                         [("lstm", 0, False), ("lstm", 4, False), ("mlp", 4, False), ("cnn", 0, False),
                          ("lstm", 4, True), ("mlp", 0, True), ("cnn", 4, True)])
def test_sequence_prediction_averages_overlapping_windows(backbone: str, residual_dim: int,
                                                          linear_skip: bool) -> None:
    """Against ``forward`` window by window: embedding each frame once (``Animator.embed``) changes nothing."""
    model = _built_animator(backbone, residual_dim=residual_dim, linear_skip=linear_skip)
    x = torch.randn(13, 5)
    expected = torch.zeros(13, 3)
    count = torch.zeros(13, 1)
    for start in range(13 - 8 + 1):
        expected[start : start + 8] += model(x[None, start : start + 8])[0]
        count[start : start + 8] += 1
    prediction = model.predict_sequence(x)
    torch.testing.assert_close(prediction, expected / count)
    assert not prediction.requires_grad  # inference: callers turn it into numpy
    short = torch.randn(5, 5)  # shorter than a window: one window of what there is
    torch.testing.assert_close(model.predict_sequence(short), model(short[None])[0])
    with pytest.raises(ValueError, match=r"this animator takes \(frames, 5\)"):
        model.predict_sequence(torch.randn(20, 4))


@pytest.mark.parametrize(("length", "linear_skip"), [(3, False), (8, False), (21, False), (21, True)])
def test_streaming_equals_sequence_prediction(length: int, linear_skip: bool) -> None:
    model = _built_animator(linear_skip=linear_skip)
    x = torch.randn(length, 5)
    stream = model.stream()
    out, latencies = [], []
    for t in range(length):
        emitted = stream.push(x[t])
        out += emitted
        latencies += [t - (len(out) - 1)] * len(emitted)
    out += stream.flush()
    assert len(out) == length
    torch.testing.assert_close(torch.stack(out), model.predict_sequence(x))
    assert all(latency == 7 for latency in latencies)  # the bounded look-ahead: window - 1 frames


@pytest.mark.parametrize("backbone", ["mlp", "cnn", "lstm"])
def test_a_fresh_linear_skip_is_the_whole_animator(backbone: str) -> None:
    """``linear_skip``: the backbone's output projection starts at zero, so a fresh network is its linear map."""
    torch.manual_seed(0)
    net = AnimatorNet(feature_dim=5, latent_dim=3, backbone=backbone, hidden=8, residual_dim=2, linear_skip=True)
    x = torch.randn(4, 8, 5)
    torch.testing.assert_close(net(x, torch.randn(4, 8, 3)), net.skip(x))
    assert AnimatorNet(5, 3, backbone, hidden=8).skip is None


def test_the_linear_skip_starts_at_the_ridge_fit_of_the_training_frames(actor: CaptureCache, tmp_path: Path) -> None:
    """Before any step, an animator with ``linear_skip`` predicts the training frames' latents as the closed-form
    ridge regression of the normalised latents on the normalised features does (valid frames only), and it
    already predicts the held-out frames far better than the training mean; bad penalties are refused."""
    data = AnimatorDataModule(str(actor.root), features="expression", batch_size=16)
    model = Animator(features="expression", backbone="lstm", hidden=8, linear_skip=True, ridge=0.01,
                     test_after_fit=False)
    pl.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, default_root_dir=tmp_path).fit(model, datamodule=data)
    features, latents = data.training_frames()
    stats = data.statistics()
    x = (features.astype(np.float64) - stats["feature_mean"]) / stats["feature_std"]
    z = (latents.astype(np.float64) - stats["latent_mean"]) / stats["latent_std"]
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    penalty = np.diag([0.01 * len(x)] * x.shape[1] + [0.0])  # the intercept is not penalised
    solution = np.linalg.solve(design.T @ design + penalty, design.T @ z)
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(features)[:, None])[:, 0].double().numpy()
    expected = (design @ solution) * stats["latent_std"] + stats["latent_mean"]
    np.testing.assert_allclose(predicted, expected, atol=1e-4)
    test = actor.sequences_in("test")[0]
    rows = np.arange(test.first, test.last + 1)
    rows = rows[np.asarray(actor.read("features/expression.valid"))[rows]]
    truth = actor.read("latents/head_vae")[rows]
    with torch.no_grad():
        held_out = model(torch.from_numpy(actor.read("features/expression")[rows])[:, None])[:, 0].numpy()
    assert ((held_out - truth) ** 2).mean() < 0.2 * ((truth - latents.mean(0)) ** 2).mean()
    whole = model.net.skip.weight.clone()
    model._fit_linear_skip(data.training_chunks(chunk=7))  # summed in many chunks: the same fit
    torch.testing.assert_close(model.net.skip.weight, whole, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="ridge must be > 0"):
        Animator(linear_skip=True, ridge=0.0)


# ---------------------------------------------------------------------------------------------- scoring
def test_scores_against_analytic_values() -> None:
    ramp = np.linspace(0, 1, 10)[:, None] * np.ones((1, 2))
    assert second_difference_magnitude(ramp) == pytest.approx(0.0, abs=1e-12)
    zigzag = np.array([0.0, 1.0, 0.0, 1.0])[:, None]
    assert second_difference_magnitude(zigzag) == pytest.approx(2.0)
    targets = [ramp, ramp[:6]]
    predictions = [ramp + 0.5, ramp[:6] + 0.5]
    valid = [np.ones(10, bool), np.array([True] * 5 + [False])]
    scores = score_sequences(predictions, targets, valid)
    assert scores["metrics"]["latent_mse"] == pytest.approx(0.25)
    assert scores["frames"] == 16 and scores["frames_scored"] == 15
    assert scores["per_frame"]["latent_mse"][-1] is None and len(scores["per_frame"]["latent_mse"]) == 16
    assert scores["metrics"]["jitter_ratio"] is None  # targets without jitter: the ratio is undefined, not inf

    mean = mean_baseline(np.array([[0.0, 2.0], [2.0, 4.0]]), [3])
    np.testing.assert_allclose(mean[0], [[1.0, 3.0]] * 3)
    bank_x, bank_z = np.eye(4, dtype=np.float32), np.arange(8, dtype=np.float32).reshape(4, 2)
    nearest = nearest_neighbour_baseline(bank_x, bank_z, [bank_x[[2, 0]] + 0.01], chunk=1)
    np.testing.assert_array_equal(nearest[0], bank_z[[2, 0]])


# ---------------------------------------------------------------------------------------------- the data
def _save_head_vae(path: Path, latent_dim: int, num_blend_shapes: int) -> HeadVAE:
    """A (randomly initialised) head VAE saved in Lightning's checkpoint layout: the blend decoder of the scores."""
    torch.manual_seed(0)
    vae = HeadVAE(texture_size=16, num_blend_shapes=num_blend_shapes, latent_dim=latent_dim, width=4,
                  perceptual_weight=0.0, adversarial_weight=0.0).eval()
    save_lightning_checkpoint(vae, path)
    return vae


@pytest.fixture(scope="module")
def actor(tmp_path_factory: pytest.TempPathFactory) -> CaptureCache:
    """Features and latents of one hidden expression (truth known); blend weights decoded from the true latents.

    The encode stage's record names the head VAE checkpoint, as it does after ``encode``, so scoring finds it.
    """
    root = tmp_path_factory.mktemp("animator") / "cache"
    cache, _ = make_expression_cache(root)
    checkpoint = root.parent / "head_vae.ckpt"
    vae = _save_head_vae(checkpoint, cache.record("latents/head_vae").shape[1], num_blend_shapes=4)
    with torch.no_grad():
        blend = vae.decode_blend_weights(torch.from_numpy(cache.read("latents/head_vae"))).numpy()
    cache.write_array("tracking/blend_weights", blend, stage="test-fixture", per_frame=True)
    record_latent_source(cache, "head_vae", checkpoint)
    return CaptureCache(root)


def test_windows_are_batched_and_stay_inside_sequences(actor: CaptureCache) -> None:
    data = AnimatorDataModule(str(actor.root), features="expression", batch_size=16)
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert sum(len(b["x"]) for b in batches) == len(data.datasets["train"])
    batch = batches[0]
    assert batch["x"].shape == (16, 8, data.feature_dim) and batch["z"].shape == (16, 8, data.latent_dim)
    assert batch["valid"].dtype == torch.bool and batch["valid"].shape == (16, 8)
    sequence_of = np.zeros(actor.num_frames, dtype=np.int64)
    for i, seq in enumerate(actor.sequences):
        sequence_of[seq.first : seq.last + 1] = i
    for b in batches:
        frames = b["frame_index"].numpy()
        assert (np.diff(frames, axis=1) == 1).all()
        assert (sequence_of[frames] == sequence_of[frames[:, :1]]).all()
        np.testing.assert_array_equal(b["z"].numpy(), actor.read("latents/head_vae")[frames])
    stats = data.statistics(chunk=7)
    rows = np.concatenate([np.arange(s.first, s.last + 1) for s in actor.sequences_in("train")])
    z = actor.read("latents/head_vae")[rows]
    valid = actor.read("features/expression.valid")[rows]
    x = actor.read("features/expression")[rows][valid]  # frames without a face do not count
    np.testing.assert_allclose(stats["feature_mean"], x.mean(0), rtol=1e-4, atol=1e-5)
    assert not valid.all()
    np.testing.assert_allclose(stats["latent_mean"], z.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["latent_std"], np.maximum(z.std(0), stats["latent_std"].min()), rtol=1e-3)


def test_non_finite_features_are_refused(actor: CaptureCache, tmp_path: Path) -> None:
    root = tmp_path / "nan"
    shutil.copytree(actor.root, root)
    x = np.load(root / "features" / "expression.npy", mmap_mode="r+")
    x[3, 0] = np.nan
    x.flush()
    with pytest.raises(CacheError, match="non-finite values in features/expression"):
        AnimatorDataModule(str(root), features="expression").statistics()


def test_missing_features_name_the_producing_command(actor: CaptureCache) -> None:
    data = AnimatorDataModule(str(actor.root), features="deca_resnet")
    with pytest.raises(CacheError, match="features"):
        data.setup("fit")


# ---------------------------------------------------------------------------------------------- the tiny grid
GRID = list(product(["mlp", "cnn", "lstm"], [0, 8]))


@pytest.fixture(scope="module")
def grid_runs(actor: CaptureCache, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """Every backbone with and without the residual, trained and scored through the real CLI."""
    runs = tmp_path_factory.mktemp("grid")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: a second thread only adds synchronisation (and stalls under load)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    for backbone, residual in GRID:
        code = cli_main([
            "fit", "--config", str(EXPERIMENTS / "animator.yaml"), "--config", str(EXPERIMENTS / "animator_tiny.yaml"),
            f"--model.init_args.backbone={backbone}", f"--model.init_args.residual_dim={residual}",
            "--model.init_args.features=expression",
            f"--data.init_args.cache_dir={actor.root}", f"--trainer.logger.init_args.save_dir={runs}",
            f"--trainer.default_root_dir={runs}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ])
        assert code == 0
    return runs


def test_every_learned_cell_beats_both_baselines(grid_runs: Path) -> None:
    """On a problem with a learnable truth every cell must beat predicting the mean and the nearest neighbour, in
    latents and in decoded blend weights, and be neither frozen nor much shakier than the targets (measured here:
    learned latent MSE 0.012-0.087 against 0.19 for the nearest neighbour and 0.41 for the mean; jitter 1.2-2.4)."""
    for backbone, residual in GRID:
        scores = json.loads((grid_runs / "expression" / f"{backbone}_residual{residual}" / "scores.json").read_text())
        assert scores["model"]["backbone"] == backbone and scores["model"]["residual_dim"] == residual
        for metric in ("latent_mse", "blend_mse"):
            learned = scores["metrics"][metric]
            assert learned is not None  # blend_mse: decoded through the recorded head VAE checkpoint
            for key, baseline in scores["baselines"].items():
                value = baseline["metrics"][metric]
                assert learned < value, f"{scores['label']}: {metric} {learned:.4g} is not below {key}'s {value:.4g}"
        assert scores["reference"]["blend_mse_of_target_latents"] is not None
        assert len(scores["per_frame"]["latent_mse"]) == scores["frames"] == 60
        assert scores["frames_scored"] < 60  # frames without a face are not scored
        assert 0.5 < scores["metrics"]["jitter_ratio"] < 4.0, scores["metrics"]["jitter_ratio"]


def test_compare_writes_the_grid_table(grid_runs: Path, tmp_path: Path) -> None:
    assert cli_main(["compare", str(grid_runs), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "scores.md").read_text()
    assert table.count("expression") >= len(GRID) and "nearest neighbour" in table and "training mean" in table
    for name in ("scores.csv", "latent_mse.png", "blend_mse.png", "per_frame_latent_mse.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0


def test_checkpoint_refuses_features_of_another_size(grid_runs: Path, actor: CaptureCache, tmp_path: Path) -> None:
    checkpoint = grid_runs / "expression" / "lstm_residual0" / "checkpoints" / "last.ckpt"
    model = Animator.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False)
    assert model.hparams.features == "expression" and model.feature_std.abs().sum() > 0
    root = tmp_path / "other"
    shutil.copytree(actor.root, root)
    cache = CaptureCache(root)
    n = cache.num_frames
    cache.write_array("features/expression", np.zeros((n, 12), np.float32), stage="test", per_frame=True)
    data = AnimatorDataModule(str(root), features="expression")
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(CacheError, match="has 12 values per frame .* trained on 24"):
        trainer.test(model, datamodule=data)


def test_sweep_points_compose_into_valid_configs(tmp_path: Path) -> None:
    sweep = yaml.safe_load((EXPERIMENTS / "sweeps" / "ablation.yaml").read_text())
    assert sweep["method"] == "grid"
    command = sweep["command"]
    args = command[command.index("fit") + 1 : command.index("${args}")]
    names = list(sweep["parameters"])
    points = list(product(*(sweep["parameters"][n]["values"] for n in names)))
    assert len(points) == 18
    seen = set()
    for values in points:
        overrides = [f"--{n}={v}" for n, v in zip(names, values, strict=True)]
        cli = build_lightning_cli([*args, *overrides, f"--trainer.default_root_dir={tmp_path}"], run=False)
        model, data = cli.model, cli.datamodule
        assert isinstance(model, Animator) and isinstance(data, AnimatorDataModule)
        assert (model.hparams.backbone, model.hparams.features, model.hparams.residual_dim) == values
        assert not model.hparams.linear_skip  # the paper's grid
        assert data.features == model.hparams.features and data.window == model.hparams.window == 8
        assert cli.trainer.max_steps == 15000
        seen.add(cli.trainer.loggers[0].log_dir)
    assert len(seen) == 18  # every point logs into its own folder


def test_the_grid_has_every_cell_and_the_headline_file() -> None:
    for backbone in ("mlp", "cnn", "lstm"):
        for variant in ("expression", "resnet", "resnet_residual", "mediapipe", "mediapipe_residual"):
            assert (EXPERIMENTS / f"{backbone}_{variant}.yaml").is_file()
    cli = build_lightning_cli(["--config", str(EXPERIMENTS / "lstm_resnet_residual.yaml")], run=False)
    assert (cli.model.hparams.backbone, cli.model.hparams.features) == ("lstm", "deca_resnet")
    assert not cli.model.hparams.linear_skip  # the paper's animator on the paper's features
    assert cli.model.hparams.residual_dim > 0 and cli.model.hparams.lr == 1e-4 and cli.model.hparams.lr_gamma == 0.96
    assert cli.datamodule.batch_size == 32 and cli.datamodule.window == 8
