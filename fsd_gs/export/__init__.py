"""Export Gaussians to the formats other tools read, and to a triangle mesh.

    from fsd_gs.export import FORMATS, MeshConfig, export_gaussians, validate_formats
    export_gaussians(gaussians, run_dir, ["splat", "ply_compressed", "glb", "mesh"])

    python -m fsd_gs.export RUN_DIR_OR_PLY --to splat ply_compressed glb mesh

Formats (docs/export.md has the details and which viewers open what):
    ply             INRIA 3DGS .ply (fsd_gs.io.ply; raw log-scales and logit opacities)
    ply_compressed  PlayCanvas/SuperSplat .compressed.ply (gsplat's exporter; quantised, ~4x smaller)
    splat           antimatter15 .splat (gsplat's exporter; 32 bytes a Gaussian, DC colour only)
    glb             glTF binary with KHR_gaussian_splatting (pygltflib; linear scales, sigmoid opacities, xyzw)
    mesh            marching cubes on the Gaussians' density (scikit-image), written by trimesh as glb/obj/ply

Modules: base (ExportFormat: a format's suffix and encoder; the finite-rows filter and the atomic write, once),
ply, splats, gltf, mesh (the formats), registry (EXPORT_FORMATS; plugins through the ``fsd_gs.export`` entry point
group), formats (names, paths, export_gaussians), __main__ (the CLI). Adding a format: docs/extending.md.
"""

from fsd_gs.export.base import ExportFormat
from fsd_gs.export.formats import FORMATS, SUFFIXES, export_gaussians, output_paths, validate_formats
from fsd_gs.export.mesh import MeshConfig
from fsd_gs.export.registry import EXPORT_FORMATS
from fsd_gs.finite import ExportWarning, NonFiniteWarning

__all__ = [
    "EXPORT_FORMATS",
    "FORMATS",
    "SUFFIXES",
    "ExportFormat",
    "ExportWarning",
    "MeshConfig",
    "NonFiniteWarning",
    "export_gaussians",
    "output_paths",
    "validate_formats",
]
