"""The actor's own blend shapes: found where the semantic rig leaves a residual, scaled to the weights' range."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from avatar_lightning.capture.personal_shapes import (
    FRAMES_PER_COMPONENT,
    REACH_PERCENTILE,
    expression_residuals,
    personal_shapes,
    with_personal_shapes,
)
from avatar_lightning.capture.template import ActorTemplate, build_actor_template, with_rest_shape
from avatar_lightning.synth import face as F
from avatar_lightning.synth.blendshapes import BLEND_SHAPE_NAMES

LOWER_LIP = (14, 87, 178, 88, 95, 317, 402, 318, 324, 17, 84, 314)  # inner and outer lower lip, FaceMesh indices


@pytest.fixture(scope="module")
def actor() -> ActorTemplate:
    return build_actor_template(np.repeat(F.astronaut_photo().landmarks[None], 4, 0))


def _lip_roll(actor: ActorTemplate) -> np.ndarray:
    """A motion the semantic rig lacks: the lower lip rolls in (back and up), 4 mm at full strength."""
    extra = np.zeros((F.NUM_LANDMARKS, 3))
    extra[list(LOWER_LIP)] = [0.0, -0.002, 0.0035]
    return extra


def _frames(actor: ActorTemplate, rng: np.random.Generator, count: int, extra: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FaceMesh-like landmarks ``(F, 478, 3)`` in pixels of the template moved by random semantic weights and
    ``strength * extra``, each frame turned, scaled and shifted; the weights and strengths."""
    weights = rng.uniform(0, 0.6, (count, len(BLEND_SHAPE_NAMES))) * (rng.random((count, 17)) < 0.3)
    strength = rng.uniform(0, 1, count)
    rest = actor.template.vertices[: F.NUM_LANDMARKS].astype(np.float64)
    shapes = rest + np.einsum("fk,kvc->fvc", weights, actor.blend_basis[:, : F.NUM_LANDMARKS])
    shapes += strength[:, None, None] * extra
    turns = Rotation.from_rotvec(rng.normal(0, 0.15, (count, 3))).as_matrix()
    pixels = 1800 * np.einsum("fij,fvj->fvi", turns, shapes) + [320.0, 240.0, 0.0]
    iris = pixels[:, :10]  # FaceMesh's 10 iris points: no template vertex, never used
    return np.concatenate([pixels, iris], 1), weights.astype(np.float32), strength


def test_a_motion_outside_the_semantic_rig_becomes_a_personal_pair(actor: ActorTemplate) -> None:
    rng = np.random.default_rng(0)
    extra = _lip_roll(actor)
    landmarks, weights, strength = _frames(actor, rng, 3 * FRAMES_PER_COMPONENT, extra)
    residual = expression_residuals(actor, landmarks, weights)
    # Pose and scale come off exactly: what is left is the lip roll and nothing else.
    np.testing.assert_allclose(residual, strength[:, None, None] * extra, atol=2e-6)

    shapes = personal_shapes(actor, landmarks, weights, components=3)
    assert shapes.names == ("personal_1+", "personal_1-", "personal_2+", "personal_2-", "personal_3+",
                            "personal_3-")
    assert shapes.basis.shape == (6, len(actor.template.vertices), 3) and shapes.frames == 3 * FRAMES_PER_COMPONENT
    assert shapes.explained > 0.999
    first = shapes.basis[:2, : F.NUM_LANDMARKS].reshape(2, -1)
    cosines = first @ extra.reshape(-1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(extra) + 1e-12)
    along = int(np.argmax(cosines))
    assert cosines[along] > 0.999  # one of the pair is the roll itself, the other its opposite (never reached)
    # Weight 1 reaches the strength's top percentile: the weights keep their [0, 1] range.
    reach = np.percentile(strength, REACH_PERCENTILE)
    assert np.linalg.norm(first[along]) == pytest.approx(reach * np.linalg.norm(extra), rel=1e-3)
    # The added mouth centre follows the inner lip loop.
    mouth = shapes.basis[along, actor.template.mouth_centre]
    np.testing.assert_allclose(mouth, shapes.basis[along, list(F.INNER_LIP_LOOP)].mean(0), atol=1e-7)


def test_personal_shapes_follow_the_semantic_ones(actor: ActorTemplate) -> None:
    rng = np.random.default_rng(1)
    landmarks, weights, _ = _frames(actor, rng, 100, _lip_roll(actor))
    shapes = personal_shapes(actor, landmarks, weights, components=2)
    extended = with_personal_shapes(actor, shapes)
    assert extended.blend_basis.shape[0] == 17 + 4
    np.testing.assert_array_equal(extended.blend_basis[:17], actor.blend_basis)
    assert extended.blend_shape_names == BLEND_SHAPE_NAMES + shapes.names
    with pytest.raises(ValueError, match="before adding personal shapes"):
        with_rest_shape(extended, extended.template.vertices[: F.NUM_LANDMARKS])


def test_fewer_frames_give_fewer_personal_shapes(actor: ActorTemplate) -> None:
    rng = np.random.default_rng(2)
    landmarks, weights, _ = _frames(actor, rng, FRAMES_PER_COMPONENT - 1, _lip_roll(actor))
    assert personal_shapes(actor, landmarks, weights, components=4) is None
    landmarks, weights, _ = _frames(actor, rng, 2 * FRAMES_PER_COMPONENT + 10, _lip_roll(actor))
    assert personal_shapes(actor, landmarks, weights, components=0) is None
    assert len(personal_shapes(actor, landmarks, weights, components=4).names) == 2 * 2  # two per 100 frames
