"""Latents z -> the avatar's composited frames: head VAE decoder -> posed mesh -> rasteriser -> U-Net -> eq. 1.

One :class:`AvatarRenderer` serves ``animate`` (a driving video's latents) and ``evaluate`` (held-out latents
posed by the capture's tracked pose), so both render the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch import Tensor

from avatar_lightning.avatar.folder import Avatar
from avatar_lightning.avatar.precision import autocast, resolve_precision
from avatar_lightning.avatar.runtime import make_runner
from avatar_lightning.cache.manifest import CameraRecord
from avatar_lightning.render import Cameras, RasterSettings, get_rasterizer, render_textured
from avatar_lightning.render.compose import Composition, compose

ORBIT_DEGREES = 30.0  # the orbit swings the view +-30 degrees about the head's vertical axis
ORBIT_SECONDS = 4.0  # one swing left and back


def orbit_cameras(record: CameraRecord, centre: Tensor, frames: Sequence[int], fps: float) -> Cameras:
    """Novel views swinging about the head's vertical axis, at the capture camera's distance and focal length."""
    R, t = torch.tensor(record.R, dtype=torch.float32), torch.tensor(record.t, dtype=torch.float32)
    eye0 = -(R.T @ t) - centre
    angles = torch.tensor([math.radians(ORBIT_DEGREES) * math.sin(2 * math.pi * f / (ORBIT_SECONDS * fps))
                           for f in frames])
    cos, sin = torch.cos(angles), torch.sin(angles)
    eyes = torch.stack([cos * eye0[0] + sin * eye0[2], eye0[1].expand_as(cos), -sin * eye0[0] + cos * eye0[2]], 1)
    return Cameras.look_at(eyes + centre, centre, width=record.width, height=record.height, focal=record.K[0][0])


class AvatarRenderer:
    """Latents ``z (B, Z)`` -> composited frames ``(B, H, W, 3) uint8`` from one capture camera or an orbit."""

    def __init__(self, avatar: Avatar, camera: str | None = None, orbit: bool = False,
                 background: np.ndarray | None = None, fps: float = 25.0, device: torch.device | None = None,
                 precision: str = "32", backend: str = "torch") -> None:
        self.avatar, self.orbit, self.fps = avatar, orbit, fps
        self.device = device or torch.device("cpu")
        # float32 unless asked: scores (evaluate) stay comparable; `animate` asks for `auto` (bf16 where native)
        self.precision = resolve_precision(precision, self.device, backend)
        # The two image networks through the chosen inference backend (avatar_lightning.avatar.runtime); torch: eager.
        self.decode = make_runner(avatar.head_vae.vae.decoder, backend)
        self.unet = make_runner(avatar.rerenderer.unet, backend)
        self.record = avatar.camera(camera)
        self.pose = torch.tensor(avatar.info["default_pose"], dtype=torch.float32, device=self.device)
        size = (self.record.height, self.record.width)
        if background is not None:
            plate = cv2.resize(background, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        elif orbit:  # a capture camera's plate does not match a novel view: a neutral backdrop
            plate = np.full((*size, 3), 128, dtype=np.uint8)
        else:
            plate = avatar.plates[self.record.name]
        self.plate = torch.from_numpy(np.ascontiguousarray(plate)).to(self.device).permute(2, 0, 1)[None].float() / 255
        # The torso sways with the person (render.body): only over the capture camera's own plate
        body = None if background is not None or orbit else avatar.bodies.get(self.record.name)
        self.body = body.to(self.device) if body is not None else None
        self.settings = RasterSettings()
        self.rasterizer = get_rasterizer(self.settings.backend, self.device)
        self.camera = Cameras.from_dict(self.record).to(self.device)

    @torch.no_grad()
    def coverage(self, vertices: Tensor, chunk: int = 16) -> Tensor:
        """``(B, H, W) bool`` on the CPU: where the avatar's mesh, posed as ``vertices (B, V, 3)``, lies in this
        camera's image (what ``evaluation.images`` scores as the head, drawn from the tracked mesh of the captured
        frames). ``chunk`` frames at a time, as :meth:`render` is called: a batch of full-size frames at once would
        hold every frame's raster buffers."""
        white = torch.ones(1, 2, 2, 1, device=self.device)
        masks = []
        for part in vertices.split(chunk):
            _, mask = render_textured(self.avatar.mesh, part.to(self.device, torch.float32), white, self.camera,
                                      self.settings, self.rasterizer)
            masks.append((mask[..., 0] > 0.5).cpu())
        return torch.cat(masks)

    def driven_pose(self, rotations: np.ndarray) -> Tensor:
        """Poses ``(B, 6)``: the driving head's rotations ``(B, 3, 3)`` (camera coordinates, relative to its first
        frame) turned into world rotations as seen from this renderer's capture camera, applied on top of the
        avatar's default pose; the translation stays the default's."""
        camera = np.asarray(self.record.R, dtype=np.float64)
        world = np.einsum("ji,bjk,kl->bil", camera, rotations, camera)  # R_c^T R R_c
        default = Rotation.from_rotvec(self.pose[:3].cpu().double().numpy())
        rotvec = (Rotation.from_matrix(world) * default).as_rotvec()
        translation = np.broadcast_to(self.pose[3:].cpu().numpy(), (len(rotations), 3))
        return torch.from_numpy(np.concatenate([rotvec, translation], axis=1)).float().to(self.device)

    @torch.no_grad()
    def render(self, z: Tensor, frames: Sequence[int], rotations: np.ndarray | None = None,
               blend_weights: Tensor | None = None, poses: Tensor | None = None, sways: Tensor | None = None
               ) -> np.ndarray:
        """Composited frames ``(B, H, W, 3) uint8`` of latents ``z``; the head posed by ``poses`` (``(B, 6)``, e.g.
        the capture's tracked poses when scoring held-out frames), else by ``rotations`` (the driving head's,
        ``(B, 3, 3)``), else fixed. Where the avatar has a body plate for this camera, the torso sways by
        ``sways (B, 2)`` (the capture's tracked sway of held-out frames), else as the head's pose goes with."""
        return _uint8(self._images(z, frames, rotations, blend_weights, poses, sways).composition.i_out)

    @torch.no_grad()
    def render_layers(self, z: Tensor, frames: Sequence[int], rotations: np.ndarray | None = None,
                      blend_weights: Tensor | None = None, poses: Tensor | None = None,
                      sways: Tensor | None = None) -> RenderedFrames:
        """:meth:`render`, keeping the mesh rendering I_orig beside the composite (what the self-reenactment ladder
        measures motion on)."""
        rendered = self._images(z, frames, rotations, blend_weights, poses, sways)
        parts = rendered.composition
        return RenderedFrames(i_orig=_uint8(rendered.i_orig), i_out=_uint8(parts.i_out),
                              alpha=parts.alpha[:, 0].float().cpu().numpy(),
                              coverage=(rendered.coverage[:, 0] > 0.5).cpu().numpy(),
                              mouth=mouth_boxes(rendered.cameras, rendered.vertices, *rendered.i_orig.shape[-2:]))

    def plates(self, pose: Tensor, sways: Tensor | None = None) -> Tensor:
        """I_backg of eq. 1 for heads posed ``pose (B, 6)``: the clean plate, with the body plate moved by ``sways
        (B, 2)`` (else by the sway that goes with ``pose``) where the avatar has one for this camera."""
        if self.body is None:
            return self.plate
        sways = self.body.sway_from_pose(pose) if sways is None else sways.to(self.device, torch.float32)
        return self.body.plates(self.plate, sways)

    def _images(self, z: Tensor, frames: Sequence[int], rotations: np.ndarray | None,
                blend_weights: Tensor | None, poses: Tensor | None, sways: Tensor | None = None) -> _Rendered:
        """I_orig ``(B, 3, H, W)`` in [0, 1] and eq. 1's parts (I_out may overshoot until it is clamped)."""
        with autocast(self.precision, self.device):
            texture, blend = self.decode(z.to(self.device))
        texture, blend = texture.float(), blend.float()
        if blend_weights is not None:  # --expression retarget: the driver's own weights shape the mesh
            blend = blend_weights.to(self.device, blend.dtype)
        if poses is not None:
            pose = poses.to(self.device, blend.dtype)
        else:
            pose = self.pose.expand(len(z), 6) if rotations is None else self.driven_pose(rotations)
        vertices = self.avatar.mesh.deform(blend, pose)
        cameras = (orbit_cameras(self.record, pose[0, 3:].cpu(), frames, self.fps).to(self.device)
                   if self.orbit else self.camera)
        i_orig, coverage = render_textured(self.avatar.mesh, vertices, texture.permute(0, 2, 3, 1), cameras,
                                           self.settings, self.rasterizer)
        i_orig, coverage = i_orig.permute(0, 3, 1, 2), coverage.permute(0, 3, 1, 2)
        with autocast(self.precision, self.device):
            raw = self.unet(self.avatar.rerenderer.net_input(i_orig, coverage))
        # eq. 1 over this renderer's plate
        return _Rendered(i_orig, compose(i_orig, raw.float(), self.plates(pose, sways)), coverage, cameras, vertices)


@dataclass(frozen=True)
class _Rendered:
    """One pass of the chain: I_orig, eq. 1's parts, the mesh's coverage, and the cameras and posed vertices that
    placed it (the ladder's mouth box comes from them)."""

    i_orig: Tensor
    composition: Composition
    coverage: Tensor
    cameras: Cameras
    vertices: Tensor


@dataclass(frozen=True)
class RenderedFrames:
    """One batch of the chain's images, ``(B, H, W, 3) uint8`` each, and what eq. 1 made of them.

    Attributes:
        i_orig: the textured mesh rendering (black where the mesh does not cover the pixel).
        i_out: the composite of equation 1 over the renderer's plate: the avatar's frame.
        alpha: ``(B, H, W)`` float32, the U-Net's weight on I_orig (where it paints its own face instead, low).
        coverage: ``(B, H, W)`` bool, where the mesh covers the pixel.
        mouth: ``(B, 4)`` int, the mouth's box ``x0, y0, x1, y1`` (pixels, end exclusive): :func:`mouth_boxes`.
    """

    i_orig: np.ndarray
    i_out: np.ndarray
    alpha: np.ndarray
    coverage: np.ndarray
    mouth: np.ndarray


# The template's first 468 vertices are FaceMesh's landmarks (synth.face): the mouth corners and the outer lips'
# top and bottom centres bound the mouth.
MOUTH_LANDMARKS = (61, 291, 0, 17)


def mouth_boxes(cameras: Cameras, vertices: Tensor, height: int, width: int, margin: float = 0.15) -> np.ndarray:
    """``(B, 4)`` int boxes ``x0, y0, x1, y1`` round the posed mesh's lips in the image, widened by ``margin`` of
    their size each side and clipped to the image."""
    with torch.no_grad():
        pixels, _ = cameras.project_to_pixels(vertices[:, list(MOUTH_LANDMARKS)])
    pixels = pixels.cpu().double().numpy()  # (B, 4, 2)
    low, high = pixels.min(1), pixels.max(1)
    pad = (high - low) * margin
    low, high = np.floor(low - pad), np.ceil(high + pad)
    boxes = np.concatenate([low, high], axis=1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes.astype(np.int64)


def _uint8(images: Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` in [0, 1] -> ``(B, H, W, 3) uint8``."""
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
