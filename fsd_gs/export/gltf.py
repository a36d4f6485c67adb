"""Gaussians as binary glTF (``.glb``) with the Khronos ``KHR_gaussian_splatting`` extension.

One mesh with one ``POINTS`` primitive (mode 0) whose ``extensions.KHR_gaussian_splatting`` is
``{"kernel": "ellipse", "colorSpace": "srgb_rec709_display", "projection": "perspective",
"sortingMethod": "cameraDistance"}``, and these float32 vertex attributes (N = number of Gaussians):

    POSITION                                   VEC3    means (with min/max, as glTF requires)
    KHR_gaussian_splatting:ROTATION            VEC4    unit quaternion in glTF order x, y, z, w
                                                       (our quats are w, x, y, z and not normalised)
    KHR_gaussian_splatting:SCALE               VEC3    LINEAR standard deviations, exp(log-scale)
    KHR_gaussian_splatting:OPACITY             SCALAR  opacity after the sigmoid, in (0, 1)
    KHR_gaussian_splatting:SH_DEGREE_l_COEF_n  VEC3    raw SH coefficients (R, G, B) of degree l, order
                                                       m = n - l (gsplat's basis order = the spec's), for
                                                       every degree up to the trained one; degree 0 is sh0
    COLOR_0                                    VEC4    fallback colour for viewers without the extension:
                                                       the DC colour clamped to [0, 1] and decoded from sRGB
                                                       to linear (glTF colours are linear), alpha = opacity

The colour space is ``srgb_rec709_display``: the diffusion prior's images, which the colours were
fitted to, are display-referred sRGB. Data stay in our world coordinates (z up, the object's front
+x); the node carries the rotation :data:`Z_UP_TO_Y_UP` that maps them to glTF's +Y up and +Z front,
which the extension lets renderers apply to positions, covariances and SH alike (no lossy rotation of
SH coefficients here). The attribute names and conventions follow the extension's specification
(KhronosGroup/glTF, extensions/2.0/Khronos/KHR_gaussian_splatting).
"""

from __future__ import annotations

import numpy as np
import torch

from fsd_gs.export.base import ExportFormat
from fsd_gs.gaussians import Gaussians, sh0_to_rgb

EXTENSION = "KHR_gaussian_splatting"
ROTATION = f"{EXTENSION}:ROTATION"
SCALE = f"{EXTENSION}:SCALE"
OPACITY = f"{EXTENSION}:OPACITY"
EXTENSION_PROPERTIES = {
    "kernel": "ellipse",
    "colorSpace": "srgb_rec709_display",
    "projection": "perspective",
    "sortingMethod": "cameraDistance",
}
"""The primitive's extension object (kernel and colorSpace are required by the spec)."""

Z_UP_TO_Y_UP = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
"""Rotation from our world (z up, front +x, left +y) to glTF's (y up, front +z, left +x): glTF = R @ ours."""


def sh_attribute(degree: int, coef: int) -> str:
    """The attribute of SH degree ``degree``, coefficient ``coef`` (order m = coef - degree)."""
    return f"{EXTENSION}:SH_DEGREE_{degree}_COEF_{coef}"


def sh_attributes(sh_degree: int) -> list[str]:
    """The attribute names of the (sh_degree + 1)^2 SH coefficients, in our ``sh_coeffs`` order (index k = l^2 + n)."""
    return [sh_attribute(degree, coef) for degree in range(sh_degree + 1) for coef in range(2 * degree + 1)]


def node_rotation_xyzw() -> list[float]:
    """:data:`Z_UP_TO_Y_UP` as the glTF node's ``rotation`` (a unit quaternion x, y, z, w)."""
    from scipy.spatial.transform import Rotation

    quat = Rotation.from_matrix(Z_UP_TO_Y_UP).as_quat()
    return [float(v) for v in (quat if quat[3] >= 0 else -quat)]


def splat_attributes(gaussians: Gaussians) -> dict[str, np.ndarray]:
    """The primitive's attributes (see the module doc) as C-contiguous float32 arrays [N,C] ([N] for OPACITY)."""
    from kornia.color import rgb_to_linear_rgb

    p = {k: v.detach().to("cpu", torch.float32) for k, v in gaussians.params.items()}
    quats = torch.nn.functional.normalize(p["quats"], dim=1)
    opacity = torch.sigmoid(p["opacities"])
    srgb = sh0_to_rgb(p["sh0"][:, 0]).clamp(0.0, 1.0)  # [N,3] display (sRGB) colours
    linear = rgb_to_linear_rgb(srgb.t()[:, :, None])[:, :, 0].t()  # kornia wants (3,H,W)
    coeffs = torch.cat([p["sh0"], p["shN"]], dim=1)  # [N,K,3]
    attrs = {
        "POSITION": p["means"],
        ROTATION: quats[:, [1, 2, 3, 0]],  # wxyz -> xyzw
        SCALE: torch.exp(p["scales"]),
        OPACITY: opacity,
        **{name: coeffs[:, k] for k, name in enumerate(sh_attributes(gaussians.sh_degree))},
        "COLOR_0": torch.cat([linear, opacity[:, None]], dim=1),
    }
    return {name: np.ascontiguousarray(value.numpy(), dtype="<f4") for name, value in attrs.items()}


def glb_bytes(gaussians: Gaussians) -> bytes:
    """The ``.glb`` file of ``gaussians`` (finite rows only; see the module doc)."""
    import pygltflib as gl

    attrs = splat_attributes(gaussians)
    n = len(gaussians)
    blob, views, accessors, indices = bytearray(), [], [], {}
    for name, array in attrs.items():
        components = 1 if array.ndim == 1 else array.shape[1]
        views.append(gl.BufferView(buffer=0, byteOffset=len(blob), byteLength=array.nbytes, target=gl.ARRAY_BUFFER))
        extra = {"min": array.min(axis=0).tolist(), "max": array.max(axis=0).tolist()} if name == "POSITION" else {}
        accessors.append(
            gl.Accessor(
                bufferView=len(views) - 1,
                componentType=gl.FLOAT,
                count=n,
                type={1: gl.SCALAR, 3: gl.VEC3, 4: gl.VEC4}[components],
                **extra,
            )
        )
        indices[name] = len(accessors) - 1
        blob += array.tobytes()  # float32 arrays keep every view 4-byte aligned
    primitive = gl.Primitive(
        attributes=gl.Attributes(**indices), mode=gl.POINTS, extensions={EXTENSION: dict(EXTENSION_PROPERTIES)}
    )
    gltf = gl.GLTF2(
        asset=gl.Asset(version="2.0", generator="fsd_gs"),
        extensionsUsed=[EXTENSION],
        scene=0,
        scenes=[gl.Scene(nodes=[0])],
        nodes=[gl.Node(mesh=0, name="gaussians", rotation=node_rotation_xyzw())],
        meshes=[gl.Mesh(name="gaussians", primitives=[primitive])],
        accessors=accessors,
        bufferViews=views,
        buffers=[gl.Buffer(byteLength=len(blob))],
    )
    gltf.set_binary_blob(bytes(blob))
    return b"".join(gltf.save_to_bytes())


GLB = ExportFormat(
    "glb",
    ".glb",
    lambda gaussians, options: glb_bytes(gaussians),
    "glTF binary with KHR_gaussian_splatting (pygltflib; linear scales, sigmoid opacities, xyzw)",
)
write_glb = GLB.write
"""Write a KHR_gaussian_splatting ``.glb``, atomically, non-finite rows dropped with a warning; returns the path."""
