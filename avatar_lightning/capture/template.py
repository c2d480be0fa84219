"""The actor's own head template: their neutral FaceMesh shape with the synthetic actor's topology and blend shapes.

The template is built by the same builder as the synthetic actor's (:func:`synth.face.template_from_landmarks`,
:func:`synth.blendshapes.build_blend_basis`): the FaceMesh tessellation with closed eyes and mouth, the mouth
island in UV space and the 17 semantic blend shapes, so a real actor's cache means what a synthetic one does.
Only the rest shape differs: the actor's neutral face, estimated from their landmarks.

The neutral is the per-coordinate median of frontalised landmark sets (similarity-aligned to a fixed reference
on the rigid landmarks) over the frames whose mouth and brows are most at rest and whose eyes are open: a
talking person's median face is close to neutral, and restricting to calm frames removes most of the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar_lightning.features.mediapipe_landmarks import reference_landmarks, similarity_align
from avatar_lightning.synth import face as F
from avatar_lightning.synth.blendshapes import BLEND_SHAPE_NAMES, build_blend_basis

CALM_FRACTION = 0.3  # of the frames, the calmest are averaged into the neutral
UV_FACE_WIDTH = 300.0  # the neutral's width in the builder's pixel-like units (sets the UV crop's rounding only)


@dataclass(frozen=True)
class ActorTemplate:
    """The actor's template mesh (metres, head frame: x right, y down, z away from a frontal camera).

    Attributes:
        template: vertices, triangles, uvs, uv_triangles (as the synthetic actor's).
        blend_basis: ``(17 + P, V, 3)`` float32: the shapes of ``BLEND_SHAPE_NAMES``, then P personal ones.
        neutral: ``(478, 3)`` the frontalised neutral landmarks (reference units) it was built from.
        frames_used: how many frames entered the median.
        personal_names: names of the actor's own shapes after the semantic ones (:mod:`.personal_shapes`).
    """

    template: F.FaceTemplate
    blend_basis: np.ndarray
    neutral: np.ndarray
    frames_used: int
    personal_names: tuple[str, ...] = ()

    @property
    def blend_shape_names(self) -> tuple[str, ...]:
        return BLEND_SHAPE_NAMES + self.personal_names


def _openings(aligned: np.ndarray) -> dict[str, np.ndarray]:
    """Scale-free openings per frame of frontalised landmarks ``(B, 478, 3)``: mouth, eyes, brows (``(B,)`` each)."""

    def gap(a: int, b: int) -> np.ndarray:
        return np.linalg.norm(aligned[:, a, :2] - aligned[:, b, :2], axis=-1)

    return {
        "mouth": gap(13, 14),
        "eyes": gap(159, 145) + gap(386, 374),
        "brows": gap(105, 33) + gap(334, 263),
    }


def frontalise(landmarks: np.ndarray) -> np.ndarray:
    """``(B, 478, 3)`` pixel landmarks -> aligned to the frontal reference (rotation, translation, scale removed)."""
    return similarity_align(np.asarray(landmarks, np.float64), reference_landmarks())


def neutral_shape(landmarks: np.ndarray) -> tuple[np.ndarray, int]:
    """The neutral ``(478, 3)`` from landmark sets ``(B, 478, 3)`` of one camera (frames with a face only)."""
    if len(landmarks) == 0:
        raise ValueError("no frame with a face to build the actor's template from")
    aligned = frontalise(landmarks)
    open_ = _openings(aligned)
    # Calm: mouth closed, brows low, eyes open. Rank each, keep the frames best on the sum of ranks.
    score = (np.argsort(np.argsort(open_["mouth"])) + np.argsort(np.argsort(open_["brows"]))
             + np.argsort(np.argsort(-open_["eyes"])))
    keep = max(1, int(round(CALM_FRACTION * len(aligned))))
    calm = np.argsort(score)[:keep]
    return np.median(aligned[calm], axis=0), len(calm)


def build_actor_template(landmarks: np.ndarray) -> ActorTemplate:
    """Template and blend shapes of the actor whose landmark sets ``(B, 478, 3)`` (pixels) are given."""
    neutral, used = neutral_shape(landmarks)
    points = neutral[: F.NUM_LANDMARKS]
    oval = points[list(F.FACE_OVAL)]
    scale = UV_FACE_WIDTH / (oval[:, 0].max() - oval[:, 0].min())
    corner = np.r_[points[:, :2].min(0), 0.0]
    px = (points - corner) * scale + np.array([UV_FACE_WIDTH / 4, UV_FACE_WIDTH / 4, 0.0])  # positive, some margin
    template = F.template_from_landmarks(px, topology=F.astronaut_photo().landmarks)
    return ActorTemplate(template=template, blend_basis=build_blend_basis(template), neutral=neutral,
                         frames_used=used)


def landmark_offsets_everywhere(template: F.FaceTemplate, offsets: np.ndarray) -> np.ndarray:
    """``(V, 3)`` offsets of every template vertex from those of its 468 landmark vertices ``(468, 3)``: the added
    eye and mouth centres move by the mean of the loops they close."""
    everywhere = np.zeros((len(template.vertices), 3))
    everywhere[: F.NUM_LANDMARKS] = offsets
    for side, loop in F.EYE_LOOPS.items():
        everywhere[template.eye_centres[side]] = everywhere[list(loop)].mean(0)
    everywhere[template.mouth_centre] = everywhere[list(F.INNER_LIP_LOOP)].mean(0)
    return everywhere


def with_rest_shape(actor: ActorTemplate, landmarks: np.ndarray) -> ActorTemplate:
    """The same template with its 468 landmark vertices moved to ``landmarks (468, 3)`` (metres).

    The added eye and mouth centres follow the mean motion of the loops they close; the blend shapes are rebuilt
    on the new shape by the same builder (personal shapes are fitted later, on the final rest shape).
    """
    if actor.personal_names:
        raise ValueError("with_rest_shape rebuilds the semantic shapes only; move the rest shape before adding "
                         "personal shapes")
    old = actor.template.vertices.astype(np.float64)
    vertices = old + landmark_offsets_everywhere(actor.template, landmarks - old[: F.NUM_LANDMARKS])
    template = F.FaceTemplate(**{**actor.template.__dict__, "vertices": vertices.astype(np.float32)})
    return ActorTemplate(template=template, blend_basis=build_blend_basis(template), neutral=actor.neutral,
                         frames_used=actor.frames_used)
