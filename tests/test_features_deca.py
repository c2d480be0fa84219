"""DECA's encoder: its layout (checked against DECA's published code), checkpoint loading, the two variants, and
the whole extractor (FaceMesh box, crop, normalisation, encoder) against DECA's own test-time crop recipe done
independently here on a face pasted at a known place and scale."""

from __future__ import annotations

from pathlib import Path

import cv2
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
from tests.features_fixtures import (
    HEAD_SQUARE,
    astronaut,
    blank,
    face_image,
    frames_cache,
    moving_face_frames,
    random_deca_checkpoint,
)


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


# ------------------------------------------------------------------------------------------------------------
# The extractor against an independent crop of a known face.
#
# The reference is DECA's own test-time pipeline, written here from its published code and sharing nothing with
# avatar_lightning.features.crop or DecaEncoder: decalib/datasets/datasets.py ``TestData`` with 68 landmarks
# (``bbox2point(type='kpt68')``: the landmarks' bounding box, side (w + h) / 2 * 1.1 about its centre, then
# ``size = int(old_size * 1.25)``; the box's corners go to pixel centres 0 and 223 by skimage's
# ``estimate_transform('similarity')``; ``warp`` (bilinear, black outside) of ``image / 255``: RGB, no mean/std),
# and decalib/models/encoders.py ``ResnetEncoder`` (torchvision's ResNet-50 without fc, then Linear 2048-1024,
# ReLU, Linear 1024-236) built from the checkpoint's raw ``E_flame`` tensors. FaceMesh stands in for DECA's FAN:
# the iBUG-68 outline is the face oval without its forehead arc (jaw, chin, cheeks up to the ears) and both
# eyebrows, taken from MediaPipe's own connection sets.
#
# The known face: the astronaut's head square pasted at a known place and size into a larger, non-square canvas.
# Tolerances (measured with the random encoder of ``random_deca_checkpoint``, relative L2 error of the features):
# - extractor vs the reference on the same frame and landmarks: 0.02-0.10 %. The extractor differs from DECA by
#   design only below a pixel: its box edges map to the crop's edges where DECA maps the corners to pixel centres
#   (224 / side vs 223 / size, 0.45 %), no int() on the side, a uint8 crop;
# - FaceMesh is not exactly equivariant: on a moved or rescaled face its box moves with the face to within 2 % of
#   the side (features at the carried box: up to 0.9 %); one photo at two sizes: up to 1 %.
# A random ResNet-50's features are dominated by an input-independent part, so breakages move them by little,
# but by more than that: box 10 % off 2.7 %, 5 % off 1.6 %, 1 pixel off 0.4 %; BGR 8.7 %; H and W swapped 2.3 %;
# no /255 25 400 %; ImageNet mean/std 143 %. The boxes and the crop's pixels are checked directly as well.
FOREHEAD_ARC = (10, 338, 297, 332, 284, 251, 389, 109, 67, 103, 54, 21, 162)  # FACEMESH_FACE_OVAL above the ears
# Where the face's DECA box lies in the head square (centre x, centre y, side; units of the square's side): the
# astronaut's face, in the upper middle of her head square. Measured once with FaceMesh (the crop it gives is
# centred on her face, chin to hairline); FaceMesh found it within 0.004 of this at each of eight placements tried
# (faces of 336-600 px). The reference shares the detector (FaceMesh and its pixel conversion) with the extractor;
# this pins it to the known face, so landmarks in the wrong coordinates (x and y scales swapped, normalised units)
# fail here, whatever the features do. The extractor's own box is then compared with the reference's.
KNOWN_BOX = (0.486, 0.413, 0.392)
KNOWN_BOX_TOLERANCE = 0.02  # 5 % of the box side
MATCH = 0.003  # extractor vs the reference on the same frame
CARRIED = 0.012  # extractor vs the reference at the box carried from another placement of the face
SAME_FACE = 0.015  # extractor vs itself on the face at another placement
CANVAS = (600, 800)  # H, W: not square, so x and y scales cannot be swapped unnoticed
PLACEMENTS = {"big": (40, 20, 560), "moved": (200, 30, 560), "smaller": (360, 170, 392)}  # x0, y0, side


def _outline_68() -> list[int]:
    import mediapipe as mp

    mesh = mp.solutions.face_mesh
    oval = {i for edge in mesh.FACEMESH_FACE_OVAL for i in edge} - set(FOREHEAD_ARC)
    brows = {i for edge in mesh.FACEMESH_LEFT_EYEBROW | mesh.FACEMESH_RIGHT_EYEBROW for i in edge}
    return sorted(oval | brows)


def _known_face(side: int) -> np.ndarray:
    """The astronaut's head square at ``side`` pixels: one photo, every size resampled from the 560 px version."""
    x0, y0, s = HEAD_SQUARE
    big = cv2.resize(astronaut()[y0 : y0 + s, x0 : x0 + s], (560, 560), interpolation=cv2.INTER_CUBIC)
    return big if side == 560 else cv2.resize(big, (side, side), interpolation=cv2.INTER_AREA)


def _pasted(placement: str) -> np.ndarray:
    x0, y0, side = PLACEMENTS[placement]
    frame = np.empty((*CANVAS, 3), np.uint8)
    frame[:] = (40, 90, 150)
    frame[y0 : y0 + side, x0 : x0 + side] = _known_face(side)
    return frame


def _deca_box(landmarks: np.ndarray) -> np.ndarray:
    """``bbox2point(type='kpt68')`` and TestData's scale 1.25: (cx, cy, side) in FaceMesh's pixel coordinates."""
    points = landmarks[_outline_68(), :2]
    left, top = points.min(0)
    right, bottom = points.max(0)
    old_size = (right - left + bottom - top) / 2 * 1.1
    return np.array([right - (right - left) / 2, bottom - (bottom - top) / 2, old_size * 1.25])


def _deca_crop(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """``TestData.__getitem__``'s crop of ``frame`` at ``box``: ``(224, 224, 3)`` float RGB in [0, 1]."""
    from skimage.transform import estimate_transform, warp

    cx, cy = box[0] - 0.5, box[1] - 0.5  # FaceMesh puts pixel centres at +0.5, skimage (and FAN) at integers
    size = int(box[2])
    src = np.array([[cx - size / 2, cy - size / 2], [cx - size / 2, cy + size / 2], [cx + size / 2, cy - size / 2]])
    dst = np.array([[0, 0], [0, 223], [223, 0]])
    transform = estimate_transform("similarity", src, dst)
    return warp(frame / 255.0, transform.inverse, output_shape=(224, 224))


class _ReferenceEncoder:
    """decalib's ``ResnetEncoder`` from the checkpoint's raw tensors: crop -> (features 2048, expression 50 + 3)."""

    def __init__(self, checkpoint: Path) -> None:
        from torchvision.models import resnet50

        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["E_flame"]
        self.resnet = resnet50(weights=None)
        self.resnet.fc = torch.nn.Identity()
        self.resnet.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
        self.resnet.eval()
        self.w1, self.b1, self.w2, self.b2 = (state[f"layers.{i}.{p}"] for i in (0, 2) for p in ("weight", "bias"))

    @torch.no_grad()
    def __call__(self, crop: np.ndarray) -> dict[str, np.ndarray]:
        image = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float()[None]  # (1, 3, 224, 224)
        features = self.resnet(image)
        code = torch.relu(features @ self.w1.T + self.b1) @ self.w2.T + self.b2
        # decalib/utils/config.py: shape 100, tex 50, exp 50, pose 6 (global 3, then jaw 3), cam 3, light 27
        expression = torch.cat([code[:, 150:200], code[:, 203:206]], dim=1)
        return {"deca_resnet": features[0].numpy(), "deca_expression": expression[0].numpy()}


def _relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


@pytest.fixture(scope="module")
def known_faces(deca_checkpoint: Path) -> dict:
    """Per placement: the frame, the extractor's outputs, box and crop, and DECA's box of FaceMesh's landmarks."""
    from avatar_lightning.features.mediapipe_landmarks import FaceMeshTracker

    extractor = build_extractor("deca", checkpoint=str(deca_checkpoint))
    detector = FaceMeshTracker(static=True)
    faces = {}
    for placement in PLACEMENTS:
        frame = _pasted(placement)
        extractor.reset()  # each placement is a shot of its own: no smoothing from the previous one
        values, valid = extractor.extract(frame[None])
        box = extractor.cropper.last_box.copy()
        extractor.reset()
        crop = extractor.crops(frame[None])[0][0]
        landmarks = detector(frame)
        assert valid.tolist() == [True] and landmarks is not None
        faces[placement] = {"frame": frame, "values": {k: v[0] for k, v in values.items()}, "box": box,
                            "crop": crop, "landmark_box": _deca_box(landmarks)}
    detector.close()
    return {"faces": faces, "reference": _ReferenceEncoder(deca_checkpoint)}


def test_outline_stand_in_is_the_crop_modules_point_set() -> None:
    # The same FaceMesh points by another route (MediaPipe's connection sets), so the boxes below are comparable.
    from avatar_lightning.features.crop import BOX_LANDMARKS

    assert _outline_68() == sorted(set(BOX_LANDMARKS))


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_extractor_equals_decas_crop_and_encoder_on_a_known_face(known_faces: dict, placement: str) -> None:
    face, reference = known_faces["faces"][placement], known_faces["reference"]
    x0, y0, side = PLACEMENTS[placement]
    box = face["landmark_box"]
    # The face is found where it was pasted, at the size it was pasted.
    in_head_square = np.array([(box[0] - x0) / side, (box[1] - y0) / side, box[2] / side])
    np.testing.assert_allclose(in_head_square, KNOWN_BOX, rtol=0, atol=KNOWN_BOX_TOLERANCE)
    # The extractor crops DECA's box of these landmarks ...
    np.testing.assert_allclose(face["box"], box, rtol=0, atol=1e-3 * box[2])
    # ... into the pixels DECA's warp gives (up to sub-pixel conventions) ...
    crop = _deca_crop(face["frame"], box)
    assert np.abs(face["crop"] / 255.0 - crop).mean() < 0.01
    # ... and its features are DECA's encoder's on DECA's crop.
    expected = reference(crop)
    for name in ("deca_resnet", "deca_expression"):
        assert _relative_error(face["values"][name], expected[name]) < MATCH, name


@pytest.mark.parametrize("placement", ["moved", "smaller"])
def test_moved_and_scaled_face_gives_the_moved_crop(known_faces: dict, placement: str) -> None:
    faces, reference = known_faces["faces"], known_faces["reference"]
    (ax, ay, aside), (bx, by, bside) = PLACEMENTS["big"], PLACEMENTS[placement]
    k = bside / aside
    # The box of the face at its first placement, carried analytically to the new place and size.
    a = faces["big"]["landmark_box"]
    carried = np.array([bx + k * (a[0] - ax), by + k * (a[1] - ay), k * a[2]])
    moved = faces[placement]
    np.testing.assert_allclose(moved["box"], carried, rtol=0, atol=0.025 * carried[2])
    # The extractor on the moved face: DECA's reference crop at the carried box, and what it saw before.
    expected = reference(_deca_crop(moved["frame"], carried))
    for name in ("deca_resnet", "deca_expression"):
        assert _relative_error(moved["values"][name], expected[name]) < CARRIED, name
        assert _relative_error(moved["values"][name], faces["big"]["values"][name]) < SAME_FACE, name
