"""The inference side: an avatar folder and everything that turns latents or a driving video into its frames.

Modules: :mod:`.folder` (the exported avatar folder: ``export_avatar``, ``load_avatar``), :mod:`.latents` (the
head VAE's latent of every frame, ``encode``), :mod:`.mesh_renders` (I_orig of every frame, ``render-mesh``),
:mod:`.renderer` (latents -> composited frames), :mod:`.animate` (a driving video -> an avatar video),
:mod:`.runtime` (eager, ONNX Runtime, torch.compile) and :mod:`.precision` (float32, bf16, fp16).

``avatar_lightning.avatar`` was once the folder module alone; its names are re-exported here so code written
against it keeps working.
"""

from __future__ import annotations

from avatar_lightning.avatar.folder import (
    CHECKPOINTS,
    EXPORT_HINT,
    FORMAT,
    MANIFEST,
    TEMPLATE,
    VERSION,
    Avatar,
    export_avatar,
    load_avatar,
)

__all__ = ["CHECKPOINTS", "EXPORT_HINT", "FORMAT", "MANIFEST", "TEMPLATE", "VERSION", "Avatar", "export_avatar",
           "load_avatar"]
