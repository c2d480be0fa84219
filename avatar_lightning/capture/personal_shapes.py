"""The actor's own blend shapes: how their face moves where the 17 shared semantic shapes cannot follow.

The shared rig (:mod:`synth.blendshapes`) is built procedurally on any face; a real person's jaw, lips and brows
move in their own way. Fitted to the shared anchor's frames, the semantic shapes leave a residual that is
expression, not noise: on its held-out tail the tracked mesh reaches a mean Pearson of 0.75 and a spread of 0.64
of FaceMesh's measures on the real frames; with 12 personal pairs added, 0.91 and 0.88.

The personal shapes are the principal components of that residual over the training frames:

1. each training frame's FaceMesh landmarks are mapped onto the semantic fit's mesh of that frame by a similarity
   on the rigid landmarks, and the mesh is subtracted (what is left is expression and FaceMesh's noise);
2. the leading right singular vectors of the residuals (not centred: a constant residual is a shape too), each
   split into a positive and a negative shape, because weights live in [0, 1], scaled so that weight 1 reaches
   the :data:`REACH_PERCENTILE` of that component's coefficients.

They are appended after the semantic shapes, so the first 17 weights mean what they mean for every actor (a
driver's tracked weights still retarget onto them), and the added eye and mouth centres follow their loops.
Only training frames enter: the held-out tail is never used to build the rig that is scored on it.

What they learn is the face as FaceMesh sees it, bias included. The synthetic actor moves only the shared shapes,
so on it they can learn nothing but that bias: on the 3-second test capture (80-pixel faces), 12 of them lowered
the tracked mesh's agreement with the truth's (mean Pearson of the expression measures 0.57 -> 0.46), which is why
a short capture gets fewer (:data:`FRAMES_PER_COMPONENT`). On a real face, the pixels agree: on the shared anchor
the landmark reprojection error halved, and the head VAE's reference rendering of held-out frames beat the
predict-the-mean one by 0.4-0.6 dB of face PSNR in two runs, against 0.07 dB with the shared shapes alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from avatar_lightning.capture.template import ActorTemplate, landmark_offsets_everywhere
from avatar_lightning.features.mediapipe_landmarks import similarity_align
from avatar_lightning.synth import face as F

REACH_PERCENTILE = 99.5  # weight 1 reaches this percentile of a component's training coefficients
FRAMES_PER_COMPONENT = 50  # training frames each component needs; fewer frames, fewer components (none below 50)


@dataclass(frozen=True)
class PersonalShapes:
    """``basis (2 * components, V, 3)`` float32 shapes in ± pairs; ``names``; what they explain over the frames
    they were built from (``residual_mm`` before, ``explained``: share of the residual's energy)."""

    basis: np.ndarray
    names: tuple[str, ...]
    frames: int
    residual_mm: float
    explained: float

    def report(self) -> dict[str, float | int]:
        return {"shapes": len(self.names), "frames": self.frames, "residual_rms_mm": round(self.residual_mm, 3),
                "explained": round(self.explained, 3)}


def expression_residuals(actor: ActorTemplate, landmarks: np.ndarray, blend_weights: np.ndarray) -> np.ndarray:
    """``(F, 468, 3)`` metres: FaceMesh's landmarks ``(F, 478+, 3)`` (pixels) minus the template deformed by the
    fitted ``blend_weights (F, K)``, after a similarity maps them onto that deformed template on the rigid
    landmarks. Onto each frame's own fitted shape, not the rest shape: the brow shapes move forehead landmarks by
    up to 6 mm, and an alignment to the rest would leave that as a residual of its own."""
    rest = actor.template.vertices[: F.NUM_LANDMARKS].astype(np.float64)
    fitted = rest + np.einsum("fk,kvc->fvc", blend_weights, actor.blend_basis[:, : F.NUM_LANDMARKS])
    points = np.asarray(landmarks, np.float64)[:, : F.NUM_LANDMARKS]
    aligned = np.concatenate([similarity_align(points[f : f + 1], fitted[f]) for f in range(len(points))])
    return aligned - fitted


def personal_shapes(actor: ActorTemplate, landmarks: np.ndarray, blend_weights: np.ndarray,
                    components: int) -> PersonalShapes | None:
    """The actor's ``components`` pairs of shapes (at most one per :data:`FRAMES_PER_COMPONENT` frames) from
    training frames' landmarks and their semantic fit; None where too few frames are given."""
    components = min(components, len(landmarks) // FRAMES_PER_COMPONENT)
    if components < 1:
        return None
    residual = expression_residuals(actor, landmarks, blend_weights).reshape(len(landmarks), -1)
    _, singular, directions = np.linalg.svd(residual, full_matrices=False)
    components = min(components, len(singular))
    coefficients = residual @ directions[:components].T  # (F, components)
    shapes, names = [], []
    for i in range(components):
        for sign, suffix in ((1.0, "+"), (-1.0, "-")):
            reach = np.percentile(np.clip(sign * coefficients[:, i], 0.0, None), REACH_PERCENTILE)
            offsets = sign * reach * directions[i].reshape(F.NUM_LANDMARKS, 3)
            shapes.append(landmark_offsets_everywhere(actor.template, offsets))
            names.append(f"personal_{i + 1}{suffix}")
    energy = float((singular**2).sum())
    return PersonalShapes(np.stack(shapes).astype(np.float32), tuple(names), len(landmarks),
                          residual_mm=1000 * float(np.sqrt((residual**2).mean())),
                          explained=float((singular[:components] ** 2).sum() / energy) if energy > 0 else 0.0)


def with_personal_shapes(actor: ActorTemplate, shapes: PersonalShapes) -> ActorTemplate:
    """The template with ``shapes`` appended after its semantic ones."""
    return replace(actor, blend_basis=np.concatenate([actor.blend_basis, shapes.basis]).astype(np.float32),
                   personal_names=shapes.names)
