"""Self-reenactment: the ladder finds an amplitude loss at the rung where it was injected; the face agreement scores
see a frozen avatar, a late one and another person's face on real footage."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from avatar_lightning.cache.layout import (
    BLEND_WEIGHTS,
    TEXTURES,
    feature_array,
    frames_array,
    latent_array,
    valid_array,
)
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.evaluation import reenactment
from avatar_lightning.evaluation.candidates import Candidate
from avatar_lightning.evaluation.reenactment import Ladder, self_reenactment
from avatar_lightning.synth.generate import SynthPreset, generate

# Faces large enough for FaceMesh to read expressions (it cannot at the tiny preset's 64^2), a short tail.
PRESET = SynthPreset(192, 192, 64, 25.0, (0.8,), 0.4, 3.2, 2.0, supersampling=1, chunk=16)
FRAMES = 80


@pytest.fixture(scope="module")
def actor(tmp_path_factory: pytest.TempPathFactory) -> CaptureCache:
    """The synthetic actor with latents that encode each frame exactly (its tracked blend weights and its row) and
    a one-number feature (the row), so a fake head VAE and animator can reproduce or damp it at will."""
    cache = generate(tmp_path_factory.mktemp("reenact") / "actor", preset=PRESET, seed=3, previews=False)
    blend = cache.read(BLEND_WEIGHTS)
    rows = np.arange(len(blend), dtype=np.float32)[:, None]
    cache.write_array(latent_array("exact"), np.concatenate([blend, rows], 1).astype(np.float32), stage="test",
                      per_frame=True)
    cache.write_array(feature_array("row"), rows, stage="test", per_frame=True)
    cache.write_array(valid_array("row"), np.ones(len(blend), bool), stage="test", per_frame=True)
    return CaptureCache(cache.root)


class ExactDecoder(nn.Module):
    """z = (blend weights, row) -> (the row's tracked UV texture, the weights pulled to their mean by ``gain``)."""

    def __init__(self, cache: CaptureCache, gain: float = 1.0) -> None:
        super().__init__()
        self.textures = torch.from_numpy(cache.read(TEXTURES)).permute(0, 3, 1, 2).float() / 255
        self.mean = torch.from_numpy(cache.read(BLEND_WEIGHTS).mean(0))
        self.gain = gain

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        blend = self.mean + self.gain * (z[:, :-1] - self.mean)
        return self.textures[z[:, -1].round().long()], blend


def head_vae(cache: CaptureCache, gain: float = 1.0) -> SimpleNamespace:
    decoder = ExactDecoder(cache, gain).eval()
    return SimpleNamespace(vae=SimpleNamespace(decoder=decoder), decode=decoder)


class Compositor(nn.Module):
    """The U-Net's raw output for eq. 1: I_orig where the mesh covers the pixel, the plate elsewhere; or, with a
    ``frozen`` image, that image as I_corr everywhere in every frame (a U-Net that ignores I_orig)."""

    def __init__(self, frozen: np.ndarray | None = None) -> None:
        super().__init__()
        self.frozen = None if frozen is None else torch.from_numpy(frozen).permute(2, 0, 1)[None].float() / 255

    def forward(self, x: Tensor) -> Tensor:
        coverage = x[:, 3:4]
        face = 20 * coverage - 10  # logits: +10 on the face, -10 off it
        if self.frozen is None:
            return torch.cat([torch.zeros_like(x[:, :3]), face, -10 + 0 * face, -face], 1)
        corr = torch.logit(self.frozen.clamp(0.01, 0.99)).expand(len(x), -1, -1, -1)
        everywhere = torch.full_like(face, 10.0)
        return torch.cat([corr, -everywhere, everywhere, -everywhere], 1)


def rerenderer(frozen: np.ndarray | None = None) -> SimpleNamespace:
    return SimpleNamespace(unet=Compositor(frozen).eval(),
                           net_input=lambda i_orig, coverage: torch.cat([i_orig, coverage], 1))


def animator(cache: CaptureCache, gain: float = 1.0) -> Candidate:
    """A perfect animator (the exact latents of each frame), its blend weights damped by ``gain``."""
    z = cache.read(latent_array("exact"))
    mean = z[:, :-1].mean(0)

    def predict(x: np.ndarray) -> np.ndarray:
        out = z[x[:, 0].round().astype(int)].copy()
        out[:, :-1] = mean + gain * (out[:, :-1] - mean)
        return out

    return Candidate("animator", "run", "row", predict)


def mouth(ladder: Ladder) -> dict[str, float]:
    """Each rung's amplitude ratio of mouth opening, keyed ``rung/latents``."""
    return {f"{r.name}/{r.latents}": r.summary()["mouth_open_amplitude"] for r in ladder.rungs}


def test_the_ladder_finds_a_loss_where_it_was_injected(actor: CaptureCache, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    clean = self_reenactment(actor, head_vae(actor), rerenderer(), animator(actor), "exact", max_frames=FRAMES,
                             out=tmp_path, log=lambda _: None)
    base = mouth(clean)
    assert base["tracked mesh/tracking"] > 0.6 and all(v > 0.6 for v in base.values()), base
    assert clean.rungs[0].summary()["mouth_open_pearson"] > 0.8
    assert clean.rungs[1].summary()["texture_r2"] == pytest.approx(1.0)  # the exact decoder: every texture
    assert clean.video is not None and clean.video.stat().st_size > 0 and clean.contact_sheet.stat().st_size > 0
    assert {r["rung"] for r in clean.to_json()["rungs"]} == set(reenactment.RUNGS)
    assert "| head VAE | reference |" in clean.markdown()
    outs = [r.summary() for r in clean.rungs if r.name == "I_out"]  # this U-Net takes I_orig wherever it covers
    assert all(s["orig_weight_mouth"] > 0.99 and s["orig_weight_face"] > 0.99 for s in outs), outs

    def ratios(ladder: Ladder) -> dict[str, float]:
        return {key: value / base[key] for key, value in mouth(ladder).items()}

    half, kept = (0.3, 0.72), (0.8, 1.25)
    injected = {
        "head VAE": self_reenactment(actor, head_vae(actor, 0.5), rerenderer(), animator(actor), "exact",
                                     max_frames=FRAMES, log=lambda _: None),
        "animator": self_reenactment(actor, head_vae(actor), rerenderer(), animator(actor, 0.5), "exact",
                                     max_frames=FRAMES, log=lambda _: None),
    }
    first_real = actor.read(frames_array(actor.cameras[0].name), 0, 1)[0]
    injected["I_out"] = self_reenactment(actor, head_vae(actor), rerenderer(first_real), animator(actor), "exact",
                                         max_frames=FRAMES, log=lambda _: None)
    made = reenactment.cache_avatar

    def flattened_mesh(*args: object, **kwargs: object) -> object:  # the rasteriser sees half the expression
        avatar = made(*args, **kwargs)
        avatar.mesh = replace(avatar.mesh, blend_basis=avatar.mesh.blend_basis * 0.5)
        return avatar

    monkeypatch.setattr(reenactment, "cache_avatar", flattened_mesh)
    injected["I_orig"] = self_reenactment(actor, head_vae(actor), rerenderer(), animator(actor), "exact",
                                          max_frames=FRAMES, log=lambda _: None)
    monkeypatch.undo()

    def within(value: float, bounds: tuple[float, float]) -> bool:
        return bounds[0] <= value <= bounds[1]

    r = ratios(injected["head VAE"])  # the decoder damps: every rung from the head VAE on
    assert within(r["tracked mesh/tracking"], kept), r
    assert all(within(value, half) for key, value in r.items() if key != "tracked mesh/tracking"), r
    r = ratios(injected["animator"])  # only the animator's path
    assert all(within(r[k], kept) for k in ("tracked mesh/tracking", "head VAE/reference", "I_orig/reference",
                                            "I_out/reference")), r
    assert all(within(r[k], half) for k in ("animator/animator", "I_orig/animator", "I_out/animator")), r
    r = ratios(injected["I_orig"])  # the rendered mesh, not the decoded weights
    assert all(within(r[k], kept) for k in ("tracked mesh/tracking", "head VAE/reference", "animator/animator")), r
    assert all(within(r[k], half) for k in ("I_orig/reference", "I_out/reference", "I_orig/animator",
                                            "I_out/animator")), r
    r = ratios(injected["I_out"])  # a U-Net that paints its own face over I_orig
    assert all(within(r[k], kept) for k in ("I_orig/reference", "I_orig/animator")), r
    assert r["I_out/reference"] < 0.1 and r["I_out/animator"] < 0.1, r
    outs = [r.summary() for r in injected["I_out"].rungs if r.name == "I_out"]  # and the ladder says why
    assert all(s["orig_weight_mouth"] < 0.01 and s["orig_weight_face"] < 0.01 for s in outs), outs
    assert all("orig_weight_mouth" not in r.summary() for r in injected["I_out"].rungs if r.name != "I_out")


def test_the_mouth_box_bounds_the_rendered_mouth(actor: CaptureCache) -> None:
    """The box the I_orig weight is read in lies on the lower face, about as wide as the mouth, and holds the
    projected lips."""
    from avatar_lightning.avatar.renderer import MOUTH_LANDMARKS, AvatarRenderer, mouth_boxes
    from avatar_lightning.cache.layout import POSE
    from avatar_lightning.cache.template import load_template
    from avatar_lightning.render.cameras import Cameras

    camera = actor.cameras[0]
    mesh = load_template(actor)
    poses = torch.from_numpy(actor.read(POSE)[:4].astype(np.float32))
    renderer = AvatarRenderer(reenactment.cache_avatar(actor, head_vae(actor), rerenderer(), [camera.name], mesh,
                                                       poses.mean(0)), camera.name, fps=actor.fps)
    z = torch.from_numpy(actor.read(latent_array("exact"))[:4])
    layers = renderer.render_layers(z, [0, 1, 2, 3], poses=poses)
    assert layers.alpha.shape == layers.coverage.shape == layers.i_out.shape[:3] and layers.mouth.shape == (4, 4)
    for covered, (x0, y0, x1, y1) in zip(layers.coverage, layers.mouth, strict=True):
        ys, xs = np.nonzero(covered)
        face_width = xs.max() - xs.min()
        assert 0.2 * face_width < x1 - x0 < 0.7 * face_width
        assert y0 > (ys.min() + ys.max()) / 2 and y1 <= ys.max() + 2  # the lower half of the face
        assert covered[y0:y1, x0:x1].mean() > 0.5
    vertices = mesh.deform(torch.from_numpy(actor.read(BLEND_WEIGHTS)[:4]), poses)
    lips, _ = Cameras.from_dict(camera).project_to_pixels(vertices[:, list(MOUTH_LANDMARKS)])
    boxes = mouth_boxes(Cameras.from_dict(camera), vertices, *layers.coverage.shape[1:])
    np.testing.assert_array_equal(boxes, layers.mouth)
    x, y, box = lips[..., 0].numpy(), lips[..., 1].numpy(), boxes[:, None]
    inside = (x >= box[..., 0]) & (x < box[..., 2]) & (y >= box[..., 1]) & (y < box[..., 3])
    assert inside.all()


def test_a_tail_too_short_is_refused(actor: CaptureCache) -> None:
    from avatar_lightning.errors import CacheError

    with pytest.raises(CacheError, match="at least 8"):
        self_reenactment(actor, head_vae(actor), rerenderer(), animator(actor), "exact", max_frames=5,
                         log=lambda _: None)


def test_face_agreement_on_real_footage(shared_dir: Path) -> None:
    """The person's own frames agree with themselves; a frozen copy, a late copy and another person do not."""
    from avatar_lightning.evaluation.identity import SAME_PERSON, FaceEmbedder
    from avatar_lightning.evaluation.images import FaceAgreement
    from avatar_lightning.video import iter_frames

    real = np.stack([f for i, f in enumerate(iter_frames(shared_dir / "data" / "capture" / "anchor_71s.mp4"))
                     if i % 60 == 0][:24])
    other = np.stack([f for i, f in enumerate(iter_frames(shared_dir / "data" / "driving" / "d3.mp4"))
                      if i % 10 == 0][: len(real)])
    agreement = FaceAgreement(real, 25.0, embedder=FaceEmbedder())
    assert 0.15 < agreement.identity_floor < 0.35
    itself = agreement.score(real)
    assert itself["reenact_r"] == pytest.approx(1.0) and itself["reenact_amplitude"] == pytest.approx(1.0)
    assert itself["identity"] == pytest.approx(0.0, abs=1e-6)
    frozen = agreement.score(np.repeat(real[:1], len(real), 0))
    assert frozen["reenact_amplitude"] == 0.0 and frozen["reenact_mouth_amplitude"] == 0.0 and frozen["reenact_r"] == 0
    late = agreement.score(np.roll(real, 3, 0))  # every frame stands for another: as lively, out of step
    assert abs(late["reenact_r"]) < 0.4 and late["reenact_amplitude"] == pytest.approx(1.0, abs=0.05)
    stranger = agreement.score(other)
    assert stranger["identity"] > SAME_PERSON and abs(stranger["reenact_r"]) < 0.4
    with pytest.raises(ValueError, match="rendered frames"):
        agreement.score(real[:3])
