"""The synthetic actor in a capture studio: identity, head shell, camera rig, background, lighting.

The *template* the pipeline sees is the closed face mesh (:mod:`avatar_lightning.synth.face`) with its blend
shapes and dynamic texture. The captured frames show more than the template can: a skull with hair and a neck
that the mesh does not model, so the re-render U-Net has real work (silhouette, hair, neck), as in the paper.
Frames are lit by a directional light (Lambert), rendered with supersampling, composited over the camera's
clean plate (a textured wall behind the actor) and given slight sensor noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from avatar_lightning.render import Cameras, Mesh, RasterSettings, ellipsoid_mesh, get_rasterizer, plane_mesh
from avatar_lightning.render import vertex_normals as compute_vertex_normals
from avatar_lightning.render.mesh import axis_angle_to_matrix
from avatar_lightning.synth import face as F
from avatar_lightning.synth.appearance import TextureModel, build_texture_model
from avatar_lightning.synth.blendshapes import build_blend_basis

LIGHT_DIRECTION = np.array([0.45, 0.55, 1.0]) / np.linalg.norm([0.45, 0.55, 1.0])  # travelling away from the light
AMBIENT, DIFFUSE = 0.62, 0.48
WALL_DISTANCE_M = 1.3  # behind the actor's rotation centre


@dataclass(frozen=True)
class Identity:
    """One synthetic person: face template with blend shapes, texture model, and the unmodelled head shell.

    Attributes:
        face: the template mesh (torch), with ``blend_basis (K, V, 3)``, uvs and uv_triangles.
        template: its numpy description (crop, added vertex indices).
        texture: makes the dynamic UV textures.
        shell: skull-with-hair and neck meshes in one, posed with the head (uvs address ``shell_texture``).
        shell_texture: ``(T, T, 3)`` float32 in [0, 1].
        neck_follow: ``(V_shell,)`` how much each shell vertex follows the head pose (the neck's base stays).
    """

    face: Mesh
    template: F.FaceTemplate
    texture: TextureModel
    shell: Mesh
    shell_texture: np.ndarray
    neck_follow: Tensor


def _shape_variation(vertices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another person's face shape: overall proportions plus smooth local bumps (nose, cheekbones, chin)."""
    scale = 1.0 + rng.uniform(-0.08, 0.08, size=3) * np.array([1.0, 1.0, 0.6])
    out = vertices * scale
    for index, amplitude in (
        (F.NOSE_TIP, 0.006),
        (F.CHIN, 0.008),
        (F.CHEEKS["left"][0], 0.005),
        (F.CHEEKS["right"][0], 0.005),
        (F.FOREHEAD, 0.006),
    ):
        centre = vertices[index]
        weight = np.exp(-((vertices - centre) ** 2).sum(1) / (2 * 0.02**2))[:, None]
        direction = rng.normal(size=3)
        out += weight * amplitude * direction / np.linalg.norm(direction)
    return out.astype(np.float32)


def _ellipsoid_behind(
    face_vertices: np.ndarray, radii: tuple[float, float, float], centre_xy: tuple[float, float], margin: float
) -> float:
    """The z of an ellipsoid's centre that puts its front surface ``margin`` behind every face vertex."""
    ax, ay, az = radii
    x = (face_vertices[:, 0] - centre_xy[0]) / ax
    y = (face_vertices[:, 1] - centre_xy[1]) / ay
    inside = x**2 + y**2 < 1
    depth = az * np.sqrt(np.clip(1 - x**2 - y**2, 0, 1))
    return float((face_vertices[inside, 2] + depth[inside]).max() + margin) if inside.any() else 0.0


def _shell_texture(size: int, skin: np.ndarray, hair: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Skull (top half: hair over the crown and back, skin at the temples and ears) and neck (bottom half)."""
    v, u = np.meshgrid((np.arange(size // 2) + 0.5) / (size // 2), (np.arange(size) + 0.5) / size, indexing="ij")
    longitude = 2 * np.pi * u
    strands = cv2.GaussianBlur(rng.normal(size=(size // 2, size)).astype(np.float32), (0, 0), sigmaX=0.6, sigmaY=4)
    hairline = 0.47 + 0.20 * (-np.cos(longitude)) + 0.02 * np.sin(7 * longitude)
    is_hair = np.clip((hairline - v) * 40, 0, 1)[..., None]
    skull = is_hair * np.clip(hair * (1 + 0.35 * strands[..., None]), 0, 1) + (1 - is_hair) * skin
    neck_shade = 0.82 + 0.18 * np.cos(longitude)[..., None]  # darker at the back, under the jaw
    neck = np.broadcast_to(skin * neck_shade, skull.shape)
    return np.concatenate([skull, neck], 0).astype(np.float32)


def make_identity(index: int, texture_size: int, seed: int = 0) -> Identity:
    """Identity 0 is the astronaut photo as it is; identity k >= 1 another face shape, complexion and hair."""
    rng = np.random.default_rng([seed, index, 17])
    photo = F.astronaut_photo()
    template = F.build_face_template(photo)
    vertices = template.vertices if index == 0 else _shape_variation(template.vertices, rng)
    template = F.FaceTemplate(**{**template.__dict__, "vertices": vertices})
    basis = build_blend_basis(template)
    tint = None if index == 0 else np.clip(rng.normal(1.0, 0.12, size=3), 0.7, 1.25).astype(np.float32)
    texture = build_texture_model(template, photo, texture_size, tint=tint)
    cheeks = np.clip(
        (template.uvs[[F.CHEEKS["left"][0], F.CHEEKS["right"][0]]] * texture_size).astype(int), 0, texture_size - 1
    )
    skin = texture.base[cheeks[:, 1], cheeks[:, 0]].mean(0) * 0.95
    hair = np.array([0.16, 0.11, 0.08]) if index == 0 else rng.uniform(0.05, 0.55) * rng.uniform(0.6, 1.0, size=3)
    shell_texture = _shell_texture(texture_size, skin, hair, rng)

    face_v = vertices[: F.NUM_LANDMARKS]
    top, chin = face_v[:, 1].min(), face_v[:, 1].max()
    skull_radii = (0.086, 0.128, 0.105)
    skull_xy = (0.0, top + 0.068)  # the crown rises about 6 cm above the face mesh: room for hair
    skull_z = _ellipsoid_behind(face_v, skull_radii, skull_xy, margin=0.004)
    neck_radii = (0.056, 0.16, 0.058)
    neck_xy = (0.0, chin + neck_radii[1] * 0.55)
    neck_z = max(_ellipsoid_behind(face_v, neck_radii, neck_xy, margin=0.006), skull_z - 0.01)
    skull = ellipsoid_mesh(rings=16, segments=32, radii=skull_radii)
    neck = ellipsoid_mesh(rings=10, segments=20, radii=neck_radii)
    skull_v = skull.vertices + torch.tensor([skull_xy[0], skull_xy[1], skull_z])
    neck_v = neck.vertices + torch.tensor([neck_xy[0], neck_xy[1], neck_z])
    skull_uv = skull.uvs * torch.tensor([1.0, 0.5])
    neck_uv = neck.uvs * torch.tensor([1.0, 0.5]) + torch.tensor([0.0, 0.5])
    shell = Mesh(
        vertices=torch.cat([skull_v, neck_v]),
        triangles=torch.cat([skull.triangles, neck.triangles + len(skull_v)]),
        uvs=torch.cat([skull_uv, neck_uv]),
    )
    # The neck's base stays put while its top follows the head; the skull follows fully.
    neck_follow = torch.clamp((chin + 0.05 - neck_v[:, 1]) / 0.12 + 0.25, 0.25, 1.0)
    follow = torch.cat([torch.ones(len(skull_v)), neck_follow.float()])
    face = Mesh(
        vertices=torch.from_numpy(vertices),
        triangles=torch.from_numpy(template.triangles),
        uvs=torch.from_numpy(template.uvs),
        uv_triangles=torch.from_numpy(template.uv_triangles),
        blend_basis=torch.from_numpy(basis),
    )
    return Identity(
        face=face, template=template, texture=texture, shell=shell, shell_texture=shell_texture, neck_follow=follow
    )


# ---------------------------------------------------------------------------------------------- cameras, wall
CAMERA_YAWS = {"frontal": 0.0, "diagonal_left": -30.0, "diagonal_right": 30.0}  # left = image left (-x)


def make_cameras(
    names: tuple[str, ...], width: int, height: int, face_fraction: float, distance: float = 1.0
) -> Cameras:
    """Cameras at eye level around the actor, looking at the face.

    The face oval spans ``face_fraction`` of the image height.
    """
    eye_level = -0.03
    eyes, targets = [], []
    for name in names:
        yaw = np.deg2rad(CAMERA_YAWS[name])
        eyes.append([distance * np.sin(yaw), eye_level, -distance * np.cos(yaw)])
        targets.append([0.0, eye_level + 0.01, 0.0])
    focal = face_fraction * height * distance / 0.19  # a face oval is about 19 cm tall
    cams = [
        Cameras.look_at(eye, target, width=width, height=height, focal=focal)
        for eye, target in zip(eyes, targets, strict=True)
    ]
    return Cameras(
        torch.cat([c.K for c in cams]), torch.cat([c.R for c in cams]), torch.cat([c.t for c in cams]), width, height
    )


def wall_texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A studio wall: a soft gradient, a few framed pictures and a shelf; ``(size, size, 3)`` float32."""
    hue = rng.uniform(0, 1)
    base = np.array(cv2.cvtColor(np.uint8([[[hue * 179, 40, 170]]]), cv2.COLOR_HSV2RGB)[0, 0], np.float32) / 255
    y = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    wall = base * (0.85 + 0.25 * y) * np.ones((size, size, 3), np.float32)
    for _ in range(5):
        w, h = rng.integers(size // 10, size // 4, size=2)
        x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
        colour = rng.uniform(0.1, 0.9, size=3)
        cv2.rectangle(
            wall, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), (0.15, 0.12, 0.1), thickness=max(2, size // 128)
        )
        wall[y0 + 3 : y0 + h - 3, x0 + 3 : x0 + w - 3] = colour * (0.7 + 0.3 * rng.random((h - 6, w - 6, 1)))
    shelf = int(size * rng.uniform(0.6, 0.8))
    wall[shelf : shelf + max(2, size // 64)] = (0.35, 0.25, 0.18)
    noise = cv2.GaussianBlur(rng.normal(size=(size, size)).astype(np.float32), (0, 0), size / 64)
    return np.clip(wall * (1 + 0.25 * noise[..., None]), 0, 1)


# ---------------------------------------------------------------------------------------------- rendering
@dataclass
class StudioRenderer:
    """Renders frames of one identity from a set of cameras: the same code makes and re-checks a capture.

    Args:
        identity: who is rendered.
        cameras: the rig (all one image size).
        wall: ``(T_w, T_w, 3)`` wall texture behind the actor.
        supersampling: render at this multiple of the size and average down (anti-aliased silhouettes).
    """

    identity: Identity
    cameras: Cameras
    wall: np.ndarray
    supersampling: int = 2
    backend: str = "auto"

    def __post_init__(self) -> None:
        self.settings = RasterSettings(backend=self.backend, near=0.05, far=20.0)
        self.rasterizer = get_rasterizer(self.settings.backend, torch.device("cpu"))
        self.render_cameras = self.cameras.resized(
            self.cameras.width * self.supersampling, self.cameras.height * self.supersampling
        )
        face, shell = self.identity.face, self.identity.shell
        # One mesh for the z-buffer: face (left half of the atlas) and shell (right half).
        self.uvs = torch.cat(
            [face.uvs * torch.tensor([0.5, 1.0]), shell.uvs * torch.tensor([0.5, 1.0]) + torch.tensor([0.5, 0.0])]
        )
        self.shell_texture = torch.from_numpy(self.identity.shell_texture)
        wall = plane_mesh(1, 1, size=2.2, z=WALL_DISTANCE_M)
        self.wall_mesh = wall
        self._clean_plates = self._render_wall()

    @property
    def clean_plates(self) -> Tensor:
        """``(C, H, W, 3)`` float in [0, 1]: each camera's view of the empty studio."""
        return self._clean_plates

    def _downsample(self, image: Tensor) -> Tensor:
        s = self.supersampling
        if s == 1:
            return image
        return torch.nn.functional.avg_pool2d(image.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)

    def _render_wall(self) -> Tensor:
        cams = self.render_cameras
        pos = cams.to_clip(self.wall_mesh.vertices.unsqueeze(0).expand(len(cams), -1, -1), 0.05, 20.0)
        raster = self.rasterizer.rasterize(pos, self.wall_mesh.triangles, (cams.height, cams.width))
        uv = self.rasterizer.interpolate(self.wall_mesh.uvs, raster, self.wall_mesh.triangles)
        image = self.rasterizer.texture(torch.from_numpy(self.wall)[None], uv)
        return self._downsample(image).clamp(0, 1)

    def posed_vertices(self, blend_weights: Tensor, pose: Tensor) -> tuple[Tensor, Tensor]:
        """Face ``(B, V_f, 3)`` and shell ``(B, V_s, 3)`` vertices in world space."""
        face = self.identity.face.deform(blend_weights, pose)
        rot = axis_angle_to_matrix(pose[:, :3])
        shell_rest = self.identity.shell.vertices.unsqueeze(0)
        posed = shell_rest @ rot.transpose(1, 2) + pose[:, None, 3:]
        follow = self.identity.neck_follow[None, :, None]
        return face, follow * posed + (1 - follow) * shell_rest

    def _triangles_facing(self, shell_vertices: Tensor, camera: int) -> tuple[Tensor, Tensor]:
        """Face triangles plus the shell triangles that face the camera in some frame of the batch.

        The shell is closed, so its back half is never visible: culling it halves the rasterizer's work.
        """
        face, shell = self.identity.face, self.identity.shell
        centre = self.cameras.centers[camera].to(shell_vertices)
        corners = shell_vertices[:, shell.triangles]  # (B, F, 3, 3)
        normal = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0])
        facing = ((centre - corners.mean(2)) * normal).sum(-1) > 0  # (B, F)
        kept = shell.triangles[facing.any(0)]
        triangles = torch.cat([face.triangles, kept + face.num_vertices])
        uv_triangles = torch.cat([face.uv_faces, kept + face.uvs.shape[0]])
        return triangles, uv_triangles

    def render(self, blend_weights: Tensor, pose: Tensor, textures: Tensor, camera: int) -> tuple[Tensor, Tensor]:
        """Frames of one camera.

        Args:
            blend_weights: ``(B, K)``; pose: ``(B, 6)``; textures: ``(B, T, T, 3)`` float in [0, 1].
            camera: index into the rig.

        Returns:
            ``frames (B, H, W, 3)`` float in [0, 1] without noise, and the true foreground ``(B, H, W)`` in [0, 1].
        """
        face_v, shell_v = self.posed_vertices(blend_weights, pose)
        vertices = torch.cat([face_v, shell_v], 1)  # (B, V, 3)
        batch = len(vertices)
        triangles, uv_triangles = self._triangles_facing(shell_v, camera)
        shell_tex = self.shell_texture.to(textures.dtype)
        atlas = torch.cat(
            [
                textures,
                torch.nn.functional.interpolate(
                    shell_tex.permute(2, 0, 1)[None],
                    size=textures.shape[1:3],
                    mode="bilinear",
                    align_corners=False,
                )
                .permute(0, 2, 3, 1)
                .expand(batch, -1, -1, -1),
            ],
            dim=2,
        )  # (B, T, 2T, 3)
        cams = self.render_cameras[camera]
        pos = cams.to_clip(vertices, 0.05, 20.0)
        raster = self.rasterizer.rasterize(pos, triangles, (cams.height, cams.width))
        uv = self.rasterizer.interpolate(self.uvs, raster, uv_triangles)
        albedo = self.rasterizer.texture(atlas, uv)
        normals = self.rasterizer.interpolate(compute_vertex_normals(vertices, triangles), raster, triangles)
        normals = torch.nn.functional.normalize(normals, dim=-1, eps=1e-8)
        light = torch.as_tensor(-LIGHT_DIRECTION, dtype=normals.dtype)
        shading = AMBIENT + DIFFUSE * (normals @ light).clamp_min(0)[..., None]
        mask = raster.mask
        colour = (albedo * shading).clamp(0, 1) * mask
        colour, mask = self._downsample(colour), self._downsample(mask)
        frames = colour + (1 - mask) * self._clean_plates[camera]
        return frames.clamp(0, 1), mask[..., 0]
