"""``evaluate``: scores ordered as they must be on constructed cases, images checked against a known answer, the
cell chosen on validation, and the command end to end on the tiny synthetic actor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from avatar_lightning.cache import CacheError, CaptureCache
from avatar_lightning.cli import main as cli_main
from avatar_lightning.evaluation.candidates import MEAN_LABEL, REFERENCE_LABEL, Candidate, Scores
from avatar_lightning.evaluation.cross_identity import STANDARD_DRIVERS
from avatar_lightning.evaluation.evaluate import choose
from avatar_lightning.evaluation.images import ImageScorer, _face_boxes
from avatar_lightning.scoring import cross_identity_scores
from avatar_lightning.synth.blendshapes import BLEND_SHAPE_NAMES
from avatar_lightning.synth.performance import DRIVER_STYLES, PerformanceStyle, generate_performance
from tests.helpers import REPO_ROOT

EXPERIMENTS = REPO_ROOT / "experiments"


# ---------------------------------------------------------------------------------------------- constructed cases


def _truth(frames: int = 400, shapes: int = 4, seed: int = 0) -> np.ndarray:
    """Smooth, independent blend-weight curves in [0, 1] with an identity offset."""
    t = np.arange(frames) / 25.0
    rng = np.random.default_rng(seed)
    curves = [0.4 + 0.3 * np.sin(2 * np.pi * t / rng.uniform(1.0, 3.0) + rng.uniform(0, 6)) for _ in range(shapes)]
    return np.stack(curves, axis=1)


def test_a_perfect_predictor_scores_zero_even_with_another_neutral() -> None:
    truth = _truth()
    score = cross_identity_scores(truth + np.array([0.1, -0.2, 0.05, 0.3]), truth, np.ones(len(truth), bool))
    assert score["metrics"]["relative_error"] == pytest.approx(0.0, abs=1e-12)
    assert score["metrics"]["blend_mse"] == pytest.approx(0.0, abs=1e-12)


def test_any_constant_prediction_scores_the_truths_variance() -> None:
    truth = _truth()
    valid = np.ones(len(truth), bool)
    for constant in (0.0, 0.5, 0.9):
        score = cross_identity_scores(np.full_like(truth, constant), truth, valid)
        assert score["metrics"]["relative_error"] == pytest.approx(1.0, abs=1e-12)
        assert score["metrics"]["blend_mse"] == pytest.approx(truth.var(axis=0).mean(), rel=1e-9)
        for k, shape in enumerate(score["per_shape"].values()):
            assert shape["mse"] == pytest.approx(truth[:, k].var(), rel=1e-9)
            assert shape["relative_error"] == pytest.approx(1.0, abs=1e-12)


def test_late_and_inverted_predictors_score_worse_in_order() -> None:
    truth = _truth()
    valid = np.ones(len(truth), bool)
    errors = [cross_identity_scores(np.roll(truth, lag, axis=0), truth, valid)["metrics"]["relative_error"]
              for lag in (0, 2, 5, 10)]
    assert errors[0] == 0 and all(a < b for a, b in zip(errors, errors[1:], strict=False)), errors
    inverted = cross_identity_scores(1 - truth, truth, valid)["metrics"]["relative_error"]
    assert inverted == pytest.approx(4.0)  # (-(t - m) - (t - m))^2 = 4 (t - m)^2


def test_shapes_the_driver_never_moves_are_left_out_and_invalid_frames_ignored() -> None:
    truth = _truth()
    truth[:, 2] = 0.3  # never moves
    predicted = truth.copy()
    predicted[:, 2] += np.linspace(0, 0.5, len(truth))  # a drift on a shape the driver holds still
    valid = np.ones(len(truth), bool)
    valid[:50] = False
    predicted[:50] = 7.0  # garbage where no face was found: not scored
    score = cross_identity_scores(predicted, truth, valid, names=["a", "b", "c", "d"])
    assert score["metrics"]["shapes_moving"] == 3 and score["per_shape"]["c"]["relative_error"] is None
    assert score["metrics"]["relative_error"] == pytest.approx(0.0, abs=1e-12)
    assert score["per_shape"]["c"]["mse"] > 0  # still reported in the plain MSE
    assert score["frames_scored"] == len(truth) - 50
    with pytest.raises(ValueError, match="no valid frame"):
        cross_identity_scores(predicted, truth, np.zeros(len(truth), bool))
    with pytest.raises(ValueError, match="one row per frame"):
        cross_identity_scores(predicted[:-1], truth, valid)


def test_a_rig_with_its_own_shapes_is_scored_on_the_shapes_the_driver_shares(tmp_path: Path) -> None:
    """A real actor's rig adds personal shapes after the shared ones; a synthetic driver's truth knows the shared
    ones only: they are compared, whatever the personal ones do, and a rig with fewer shapes is refused."""
    from avatar_lightning.evaluation.cross_identity import score_cross_identity
    from avatar_lightning.testing import make_tiny_cache

    driver = make_tiny_cache(tmp_path / "driver")
    truth = _truth(driver.num_frames)
    driver.write_array("truth/blend_weights", truth.astype(np.float32), stage="test", per_frame=True)
    mean = Candidate("mean", "baseline", "-", lambda x: np.zeros((len(x), 3), np.float32))
    personal = np.linspace(0, 1, driver.num_frames)[:, None]  # a personal shape that moves: not the driver's

    def decode(z: np.ndarray) -> np.ndarray:  # a perfect shared prediction, then two personal shapes
        return np.concatenate([truth, personal, 1 - personal], 1)

    scores = score_cross_identity(mean, [driver], driver, decode, ["a", "b", "c", "d", "own_1", "own_2"])
    assert scores["driver"]["metrics"]["relative_error"] == pytest.approx(0.0, abs=1e-12)
    assert sorted(scores["driver"]["per_shape"]) == ["a", "b", "c", "d"]
    with pytest.raises(CacheError, match="its truth has 4 blend shapes, the avatar 3"):
        score_cross_identity(mean, [driver], driver, lambda z: truth[:, :3], [])


def _scores(label: str, val: float, test: float, kind: str = "run") -> Scores:
    return Scores(Candidate(label, kind, "f", None, Path(label)), {"val_latent_mse": val, "latent_mse": test})


def test_a_head_vae_whose_latents_say_nothing_is_named() -> None:
    from avatar_lightning.evaluation.evaluate import _head_vae_check

    def scores(reference: float, mean: float) -> list[Scores]:
        return [Scores(Candidate(REFERENCE_LABEL, "reference", "-", None), {"blend_mse": reference}),
                Scores(Candidate(MEAN_LABEL, "baseline", "-", None), {"blend_mse": mean})]

    assert _head_vae_check(scores(0.0065, 0.0446)) == []  # the demo's head VAE: 7x below the mean
    assert "carry little expression" in _head_vae_check(scores(0.0087, 0.0088))[0]  # a collapsed one


def test_the_cell_is_chosen_on_validation_never_on_test() -> None:
    scores = [_scores("a", val=0.30, test=0.10), _scores("b", val=0.20, test=0.50), _scores("c", val=0.25, test=0.05),
              _scores("mean", val=0.01, test=0.01, kind="baseline")]
    assert choose(scores).candidate.label == "b"  # the best on test (c) and a better baseline do not count
    with pytest.raises(CacheError, match="no run"):
        choose([s for s in scores if s.candidate.kind == "baseline"])


# ---------------------------------------------------------------------------------------------- driver styles


def test_the_default_style_is_the_actors_performance() -> None:
    a = generate_performance(300, 25.0, np.random.default_rng(3))
    b = generate_performance(300, 25.0, np.random.default_rng(3), DRIVER_STYLES["default"])
    c = generate_performance(300, 25.0, np.random.default_rng(3), PerformanceStyle())
    assert all(np.array_equal(x, y) and np.array_equal(x, z) for x, y, z in zip(a, b, c, strict=True))


def test_the_standard_drivers_move_every_shape_and_differ_in_style() -> None:
    k = {name: i for i, name in enumerate(BLEND_SHAPE_NAMES)}
    weights = {style: generate_performance(300, 25.0, np.random.default_rng(identity), DRIVER_STYLES[style])[0]
               for identity, style in STANDARD_DRIVERS}
    moving = np.zeros(len(BLEND_SHAPE_NAMES), bool)
    for w in weights.values():
        assert w.min() >= 0 and w.max() <= 1
        moving |= w.std(axis=0) > 0.02
    assert moving.all(), [n for n, m in zip(BLEND_SHAPE_NAMES, moving, strict=True) if not m]
    speaking = weights["speaking"]
    for emotion_only in ("smile_left", "smile_right", "frown_left", "brow_down", "cheek_puff"):
        assert speaking[:, k[emotion_only]].max() == 0  # speaking only: no held emotions
    assert speaking[:, k["jaw_open"]].std() > 0.05
    asymmetric = weights["asymmetric"]
    for left in ("smile_left", "brow_up_left", "frown_left"):
        right = left.replace("_left", "_right")
        assert asymmetric[:, k[left]].mean() > 1.5 * asymmetric[:, k[right]].mean()
    subtle = generate_performance(300, 25.0, np.random.default_rng(9), DRIVER_STYLES["subtle"])[0]
    loud = generate_performance(300, 25.0, np.random.default_rng(9), PerformanceStyle(range_of_motion=True))[0]
    assert subtle[:, k["jaw_open"]].mean() < loud[:, k["jaw_open"]].mean()


def test_synth_writes_a_driver_of_a_style(tmp_path: Path) -> None:
    assert cli_main(["synth", "--out", str(tmp_path / "d"), "--preset", "tiny", "--identity", "2", "--style", "emoting",
                     "--no-preview"]) == 0
    cache = CaptureCache(tmp_path / "d")
    assert cache.manifest.meta["style"] == "emoting"
    assert (np.asarray(cache.read("truth/blend_weights")).std(axis=0) > 0.02).sum() >= 15
    with pytest.raises(SystemExit):
        cli_main(["synth", "--out", str(tmp_path / "e"), "--preset", "tiny", "--identity", "2", "--style", "shouty"])


# ---------------------------------------------------------------------------------------------- images


def test_face_boxes_bound_the_points_widened_and_clipped() -> None:
    pixels = np.array([[[20.0, 30.0], [40.0, 50.0]], [[-5.0, 0.0], [200.0, 90.0]]])
    boxes = _face_boxes(pixels, width=100, height=80)
    assert boxes[0].tolist() == [18, 28, 42, 52]  # 10 % of the 20-pixel extent on each side
    assert boxes[1].tolist() == [0, 0, 100, 80]
    outside = _face_boxes(np.array([[[150.0, 100.0], [160.0, 120.0]]]), width=100, height=80)
    assert outside[0].tolist() == [99, 79, 100, 80]  # a head out of view still scores one pixel, never an empty box


@pytest.fixture(scope="module")
def trained(avatar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A copy of the avatar fixture's actor with latents encoded by its head VAE, and two short animator runs."""
    from avatar_lightning.avatar.latents import encode_cache, record_latent_source
    from avatar_lightning.models.head_vae import load_head_vae

    work = tmp_path_factory.mktemp("evaluation")
    actor = work / "actor"
    shutil.copytree(avatar_dir.parent / "actor", actor)
    vae_path = avatar_dir.parent / "vae.ckpt"
    vae = load_head_vae(vae_path)
    encode_cache(vae, CaptureCache(actor), "head_vae")
    record_latent_source(CaptureCache(actor), "head_vae", vae_path, vae)
    runs = work / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for cell in ("mlp_mediapipe", "lstm_mediapipe"):
            assert cli_main(["fit", "--config", str(EXPERIMENTS / f"{cell}.yaml"),
                             f"--data.init_args.cache_dir={actor}", f"--trainer.default_root_dir={runs}",
                             f"--trainer.logger.init_args.save_dir={runs}", "--trainer.max_steps=30",
                             "--trainer.val_check_interval=30", "--model.init_args.hidden=16",
                             "--model.init_args.lr_decay_every=10", "--trainer.enable_progress_bar=false",
                             "--trainer.enable_model_summary=false"]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"actor": actor, "runs": runs, "vae": vae_path, "rerender": avatar_dir.parent / "rerender.ckpt",
            "work": work}


def _lively_decoder(decode: Any, z: np.ndarray) -> Any:
    """``decode`` with its texture's brightness following the first latent: the fixture's head VAE, trained for a
    few steps, decodes every latent to nearly the same face, and a frozen face must differ from the true one."""
    mean, std = float(z[:, 0].mean()), float(z[:, 0].std()) + 1e-6

    def decoded(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        texture, blend = decode(latents)
        gain = 0.55 + 0.45 * torch.tanh((latents[:, :1, None, None] - mean) / std)  # (B, 1, 1, 1) in (0.1, 1)
        return texture * gain, blend

    return decoded


def test_image_scores_match_a_known_answer(trained: dict[str, Path], tmp_path: Path) -> None:
    """Captured frames replaced by the chain's own rendering of the target latents, posed by the tracked poses read
    here, plus noise of known sigma: the scorer must find the PSNR of that noise (it would not if it read other
    frames, poses or cameras); a frozen face and the head posed as in other frames score lower; the head's scores
    see only the head."""
    from avatar_lightning.checkpoints import load_model
    from avatar_lightning.models.head_vae import load_head_vae
    from avatar_lightning.models.rerender import Rerenderer

    actor = tmp_path / "actor"
    shutil.copytree(trained["actor"], actor)
    cache = CaptureCache(actor)
    vae, rerender = load_head_vae(trained["vae"]), load_model(Rerenderer, trained["rerender"])
    test_rows = np.arange(cache.sequences_in("test")[0].first, cache.sequences_in("test")[0].last + 1)
    rows = test_rows[::6]
    camera = cache.cameras[1].name
    z = np.asarray(cache.read("latents/head_vae"), np.float32)
    scorer = ImageScorer(cache, vae, rerender, rows, [camera])
    lively = _lively_decoder(scorer.renderers[camera].decode, z[rows])
    scorer.renderers[camera].decode = lively
    poses = np.asarray(cache.read("tracking/pose"), np.float32)
    rendered = scorer.renderers[camera].render(torch.from_numpy(z[rows]), list(range(len(rows))),
                                               poses=torch.from_numpy(poses[rows]))
    frames = np.array(cache.read(f"cameras/{camera}/frames"))
    sigma = 4.0  # in 8-bit levels
    noise = np.random.default_rng(0).normal(0, sigma, rendered.shape)
    frames[rows] = np.clip(rendered + noise, 0, 255).round().astype(np.uint8)
    cache.write_array(f"cameras/{camera}/frames", frames, stage="test", per_frame=True)
    scorer = ImageScorer(CaptureCache(actor), vae, rerender, rows, [camera])
    scorer.renderers[camera].decode = lively
    exact = scorer.score(z[rows])
    expected = 10 * np.log10(1.0 / ((sigma**2 + 1 / 12) / 255**2))  # noise plus rounding
    assert exact["psnr"] == pytest.approx(expected, abs=0.6)
    assert exact["psnr_face"] == pytest.approx(expected, abs=0.8)
    assert exact["psnr_head"] == pytest.approx(expected, abs=0.8)
    assert exact["ssim"] > 0.8 and exact["ssim_head"] > 0.8 and exact["lpips"] is None
    frozen = scorer.score(np.broadcast_to(z[test_rows].mean(0), z[rows].shape))  # one face for every frame
    assert frozen["psnr_head"] < exact["psnr_head"] - 3.0
    scorer.poses = torch.from_numpy(poses[rows + 3])  # the head as posed three frames later
    shifted = scorer.score(z[rows])
    assert shifted["psnr_face"] < exact["psnr_face"] - 3.0
    assert shifted["psnr_head"] < exact["psnr_head"] - 3.0

    # The head is judged on the tracked mesh's pixels alone: a backdrop that moves where the plate cannot follow
    # costs the frame and the face box, not the head.
    scorer.poses = torch.from_numpy(poses[rows])
    head = scorer.heads[camera].numpy()
    assert 0.02 < head.mean() < 0.9  # the mesh covers part of each frame
    frames[rows] = np.where(head[..., None], frames[rows], 255 - frames[rows])
    cache.write_array(f"cameras/{camera}/frames", frames, stage="test", per_frame=True)
    scorer = ImageScorer(CaptureCache(actor), vae, rerender, rows, [camera])
    scorer.renderers[camera].decode = lively
    backdrop = scorer.score(z[rows])
    assert backdrop["psnr_head"] == pytest.approx(exact["psnr_head"], abs=1e-6)
    assert backdrop["psnr"] < exact["psnr"] - 10 and backdrop["psnr_face"] < exact["psnr_face"] - 3


# ---------------------------------------------------------------------------------------------- the command


def test_evaluate_command_scores_every_candidate_and_chooses_on_validation(trained: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    from avatar_lightning.synth.generate import generate

    drivers = [generate(trained["work"] / f"driver_{style}", preset="tiny", identity=identity, style=style,
                        previews=False).root for identity, style in STANDARD_DRIVERS[:2]]
    out = tmp_path / "report"
    assert cli_main(["evaluate", "--runs", str(trained["runs"]), "--cache", str(trained["actor"]), "--out", str(out),
                     "--rerender", str(trained["rerender"]), "--image-frames", "4", "--cameras", "frontal",
                     "--synthetic-drivers", *map(str, drivers)]) == 0
    for name in ("evaluation.md", "evaluation.json", "scores.md", "scores.csv", "cross_identity.md",
                 "cross_identity_shapes.png", "psnr_face.png", "xid_relative_error.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "evaluation.json").read_text())
    by_label = {c["label"]: c for c in result["candidates"]}
    runs = [c for c in result["candidates"] if c["kind"] == "run"]
    assert len(runs) == 2 and {c["backbone"] for c in runs} == {"mlp", "lstm"}
    assert result["chosen"]["label"] == min(runs, key=lambda c: c["metrics"]["val_latent_mse"])["label"]
    assert "validation" in result["chosen"]["rule"] and "not used" in result["chosen"]["rule"]
    for candidate in result["candidates"]:
        metrics = candidate["metrics"]
        for name in ("val_latent_mse", "latent_mse", "blend_mse", "psnr", "ssim", "psnr_face", "ssim_face"):
            assert metrics[name] is not None and np.isfinite(metrics[name]), (candidate["label"], name)
    assert by_label[REFERENCE_LABEL]["metrics"]["latent_mse"] == 0.0  # the targets themselves
    mean = by_label[MEAN_LABEL]
    assert mean["metrics"]["xid_relative_error"] == pytest.approx(1.0, abs=1e-6)  # a constant: the truth's variance
    assert set(mean["cross_identity"]) == {d.name for d in drivers}
    for run in runs:
        assert run["metrics"]["xid_relative_error"] > 0
        per_shape = run["cross_identity"][drivers[1].name]["per_shape"]
        assert set(per_shape) == set(BLEND_SHAPE_NAMES)
    report = (out / "evaluation.md").read_text()
    assert f"Chosen cell: **{result['chosen']['label']}**" in report and "no LPIPS" in report
    # the fixture's head VAE is untrained: its latents decode to no better than the mean, and the report says so
    assert "the head VAE's latents carry little expression" in report


def test_compare_adds_cross_identity_of_synthetic_drivers(trained: dict[str, Path], tmp_path: Path) -> None:
    from avatar_lightning.synth.generate import generate

    driver = generate(trained["work"] / "driver_compare", preset="tiny", identity=3, style="fast", previews=False)
    out = tmp_path / "compare"
    assert cli_main(["compare", str(trained["runs"]), "--out", str(out), "--synthetic-drivers",
                     str(driver.root)]) == 0
    table = (out / "scores.md").read_text()
    assert "xid_relative_error" in table and (out / "cross_identity.md").is_file()
    rows = (out / "scores.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("xid_relative_error")
    mean_row = next(r for r in rows if "training mean" in r).split(",")
    assert float(mean_row[column]) == pytest.approx(1.0, abs=1e-6)


def test_the_standard_drivers_are_made_once_and_reused(tmp_path: Path) -> None:
    from avatar_lightning.evaluation.cross_identity import make_synthetic_drivers

    first = make_synthetic_drivers("tiny", tmp_path)
    assert [p.name for p in first] == [f"identity{i}_{s}" for i, s in STANDARD_DRIVERS]
    stamps = [(p / "manifest.json").stat().st_mtime_ns for p in first]
    again = make_synthetic_drivers("tiny", tmp_path)
    assert again == first and [(p / "manifest.json").stat().st_mtime_ns for p in again] == stamps
    styles = {CaptureCache(p).manifest.meta["style"] for p in first}
    assert styles == {s for _, s in STANDARD_DRIVERS}


def test_lpips_is_measured_where_its_backbone_file_is_given(trained: dict[str, Path], tmp_path: Path) -> None:
    """A random AlexNet in torchvision's file layout stands in for the user's: LPIPS of the whole frame and of the
    face box for every candidate, zero for a frame against itself, and no 'no LPIPS' note."""
    import torchvision

    from avatar_lightning.checkpoints import load_model
    from avatar_lightning.models.head_vae import load_head_vae
    from avatar_lightning.models.rerender import Rerenderer
    from avatar_lightning.nets.perceptual import ALEXNET_FILE, load_lpips

    backbone = tmp_path / ALEXNET_FILE
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), backbone)
    out = tmp_path / "report"
    assert cli_main(["evaluate", "--runs", str(trained["runs"]), "--cache", str(trained["actor"]), "--out", str(out),
                     "--rerender", str(trained["rerender"]), "--image-frames", "3", "--lpips-backbone",
                     str(backbone)]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    for candidate in result["candidates"]:
        for metric in ("lpips", "lpips_face"):
            assert np.isfinite(candidate["metrics"][metric]) and candidate["metrics"][metric] >= 0
    assert "no LPIPS" not in (out / "evaluation.md").read_text() and "lpips_face" in (out / "scores.md").read_text()

    cache = CaptureCache(trained["actor"])
    rows = np.arange(cache.sequences_in("test")[0].first, cache.sequences_in("test")[0].first + 4)
    scorer = ImageScorer(cache, load_head_vae(trained["vae"]), load_model(Rerenderer, trained["rerender"]), rows,
                         ["frontal"], load_lpips(backbone))
    z = torch.from_numpy(np.asarray(cache.read("latents/head_vae"), np.float32)[rows])
    scorer.captured["frontal"] = torch.from_numpy(scorer.renderers["frontal"].render(
        z, list(range(len(rows))), poses=scorer.poses)).permute(0, 3, 1, 2).float() / 255
    same = scorer.score(z.numpy())
    assert same["lpips"] == pytest.approx(0.0, abs=1e-5) and same["lpips_face"] == pytest.approx(0.0, abs=1e-5)
    assert same["psnr"] == np.inf and same["ssim"] == pytest.approx(1.0, abs=1e-5)
