"""Person-independent expression features x (paper §5) behind one interface, registered by name.

``mediapipe`` (FaceMesh landmarks, offline everywhere) and ``deca`` (DECA's encoder: ``deca_resnet`` 2048-d and
``deca_expression`` 50 + 3, with the user's ``deca_model.tar``). Extraction over a capture runs through
Lightning predict (:mod:`.extract`, driven by :mod:`.run`: ``python -m avatar_lightning features``). Heavy
modules (MediaPipe, torchvision) are imported only by the extractor that needs them.
"""

from avatar_lightning.features.base import (
    FeatureBatch,
    FeatureExtractor,
    FeatureOutput,
    available_extractors,
    build_extractor,
    register_extractor,
)

__all__ = [
    "FeatureBatch",
    "FeatureExtractor",
    "FeatureOutput",
    "available_extractors",
    "build_extractor",
    "register_extractor",
]
