"""DECA's encoder: its layout (checked against DECA's published code), checkpoint loading, the two variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_lightning.cache import CacheError, CaptureCache
from avatar_lightning.cli import main
from avatar_lightning.features import build_extractor
from avatar_lightning.features.deca import (
    CHECKPOINT_ENV,
    CHECKPOINT_NAME,
    NUM_PARAMETERS,
    DecaCheckpointError,
    DecaEncoder,
    DecaFeatures,
    load_deca_encoder,
    parameter_slices,
    resolve_checkpoint,
    save_deca_checkpoint,
)
from tests.features_fixtures import blank, face_image, frames_cache, moving_face_frames, random_deca_checkpoint


@pytest.fixture(scope="module")
def deca_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_deca_checkpoint(tmp_path_factory.mktemp("deca"))


def test_parameter_order_and_sizes_follow_deca_config() -> None:
    # decalib/utils/config.py: param_list = [shape, tex, exp, pose, cam, light] with 100, 50, 50, 6, 3, 27.
    s = parameter_slices()
    assert list(s) == ["shape", "tex", "exp", "pose", "cam", "light"]
    assert [(v.start, v.stop) for v in s.values()] == [(0, 100), (100, 150), (150, 200), (200, 206), (206, 209),
                                                       (209, 236)]
    assert NUM_PARAMETERS == 236
    parameters = torch.arange(236.0)[None]
    expression = DecaEncoder.expression(parameters)
    assert expression.shape == (1, 53)
    assert expression[0, :50].tolist() == list(range(150, 200))  # FLAME expression
    assert expression[0, 50:].tolist() == [203.0, 204.0, 205.0]  # jaw: the second half of pose
    assert DecaEncoder.split(parameters)["light"].shape == (1, 9, 3)


def test_encoder_has_deca_key_names_and_shapes() -> None:
    state = DecaEncoder().state_dict()
    # decalib/models/encoders.py: ResnetEncoder.encoder (ResNet-50, no fc) and .layers (2048 -> 1024 -> 236).
    assert state["encoder.conv1.weight"].shape == (64, 3, 7, 7)
    assert state["encoder.layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["encoder.layer4.2.bn3.running_var"].shape == (2048,)
    assert state["layers.0.weight"].shape == (1024, 2048)
    assert state["layers.2.weight"].shape == (236, 1024)
    assert not any(k.startswith("encoder.fc") for k in state)
    assert len([k for k in state if k.startswith("encoder.")]) == 318  # torchvision's resnet50 minus fc


def test_checkpoint_round_trip_through_the_real_loader(deca_checkpoint: Path) -> None:
    raw = torch.load(deca_checkpoint, weights_only=True)
    assert {"E_flame", "E_detail", "D_detail", "opt", "global_step"} <= set(raw)
    encoder = load_deca_encoder(deca_checkpoint)
    assert not encoder.training
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, raw["E_flame"][key])
    with torch.no_grad():
        features, parameters = encoder(torch.rand(2, 3, 64, 64))  # small: only the output shapes matter here
    assert features.shape == (2, 2048) and parameters.shape == (2, 236)


def test_missing_checkpoint_says_which_file_and_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DecaCheckpointError) as info:
        resolve_checkpoint(None)
    message = str(info.value)
    assert CHECKPOINT_NAME in message and "--checkpoint" in message and CHECKPOINT_ENV in message
    assert "~/.cache/avatar_lightning/deca_model.tar" in message and "github.com/yfeng95/DECA" in message
    with pytest.raises(CacheError, match="does not exist"):
        build_extractor("deca", checkpoint=str(tmp_path / "nowhere" / CHECKPOINT_NAME))


def test_checkpoint_found_by_env_and_folder(deca_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CHECKPOINT_ENV, str(deca_checkpoint.parent))  # a folder holding deca_model.tar
    assert resolve_checkpoint(None) == deca_checkpoint


def test_wrong_layouts_are_refused(tmp_path: Path) -> None:
    no_encoder = tmp_path / "a.tar"
    torch.save({"state_dict": {}}, no_encoder)
    with pytest.raises(DecaCheckpointError, match="E_flame"):
        load_deca_encoder(no_encoder)
    wrong_head = tmp_path / "b.tar"
    save_deca_checkpoint(wrong_head, DecaEncoder(num_outputs=128))  # e.g. E_detail saved as E_flame
    with pytest.raises(DecaCheckpointError, match="wrong shape.*layers.2.weight"):
        load_deca_encoder(wrong_head)
    not_torch = tmp_path / "c.tar"
    not_torch.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DecaCheckpointError, match="not a readable PyTorch file"):
        load_deca_encoder(not_torch)


class _Opaque:
    """A Python object torch.load(weights_only=True) refuses."""


def test_pickled_objects_need_trust(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"E_flame": DecaEncoder().state_dict(), "extra": _Opaque()}, path)
    with pytest.raises(DecaCheckpointError, match="--trust-checkpoint"):
        load_deca_encoder(path)
    assert isinstance(load_deca_encoder(path, trust_checkpoint=True), DecaEncoder)


def test_both_variants_from_one_pass(deca_checkpoint: Path) -> None:
    extractor = build_extractor("deca", checkpoint=str(deca_checkpoint))
    assert [(o.name, o.dim) for o in extractor.outputs] == [("deca_resnet", 2048), ("deca_expression", 53)]
    frames = np.stack([face_image(256), blank(256)])
    values, valid = extractor.extract(frames)
    assert valid.tolist() == [True, False]
    assert values["deca_resnet"].shape == (2, 2048) and values["deca_expression"].shape == (2, 53)
    # The same numbers as DECA's encoder applied to the 224 crop in [0, 1].
    extractor.reset()
    crops, _ = extractor.crops(frames[:1])
    assert crops.shape == (1, 224, 224, 3)
    with torch.no_grad():
        features, parameters = extractor.encoder(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_allclose(values["deca_resnet"][:1], features.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(values["deca_expression"][:1], DecaEncoder.expression(parameters).numpy(),
                               rtol=1e-4, atol=1e-5)


def test_random_encoder_without_a_file() -> None:
    extractor = DecaFeatures(encoder=DecaEncoder())
    assert extractor.describe()["checkpoint"] is None
    with pytest.raises(ValueError, match="uint8"):
        extractor(torch.zeros(1, 64, 64, 3))


def test_features_stage_writes_both_variants(deca_checkpoint: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    frames = moving_face_frames(3, size=160)
    frames[1] = blank(160)
    cache = frames_cache(tmp_path / "cache", frames)
    assert main(["features", "--cache", str(cache.root), "--extractor", "deca", "--checkpoint", str(deca_checkpoint),
                 "--no-progress", "--batch-size", "2"]) == 0
    assert "features/deca_resnet float32[3, 2048]" in capsys.readouterr().out
    cache = CaptureCache(cache.root)
    assert cache.read("features/deca_expression").shape == (3, 53)
    for name in ("deca_resnet", "deca_expression"):
        assert cache.read(f"features/{name}.valid").tolist() == [True, False, True]
        x = cache.read(f"features/{name}")
        np.testing.assert_allclose(x[1], (x[0] + x[2]) / 2, rtol=1e-4, atol=1e-5)  # the faceless frame, filled
        assert cache.manifest.meta["features"][name]["checkpoint"] == str(deca_checkpoint)
