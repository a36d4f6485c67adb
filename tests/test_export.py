"""Exports other tools read: PlayCanvas splat-transform reads our .ply, compressed .ply and .splat; the
KHR_gaussian_splatting .glb loads back with the spec's attributes and values; the mesh of a sphere of
Gaussians has the sphere's size and volume; NaN rows are dropped with a count; CLI errors exit 2.

splat-transform is found through $FSD_GS_SPLAT_TRANSFORM, then PATH, then the npm prefix
~/.cache/fsd_gs/splat-transform (``npm install --prefix ~/.cache/fsd_gs/splat-transform
@playcanvas/splat-transform@2.7.1``, as scripts/test.sh does); without it (or without node) those tests skip and
say so, and fail under CI=true or scripts/test.sh (tests/tool_skips.py).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from fsd_gs.errors import UserError
from fsd_gs.export import FORMATS, MeshConfig, NonFiniteWarning, export_gaussians, validate_formats
from fsd_gs.export.__main__ import main
from fsd_gs.export.gltf import Z_UP_TO_Y_UP, sh_attributes
from fsd_gs.export.mesh import extract_mesh, mesh_bytes
from fsd_gs.gaussians import SH_C0, Gaussians, rgb_to_sh0
from fsd_gs.io.ply import read_ply, write_ply

SPLAT_TRANSFORM_VERSION = "2.7.1"
NPM_PREFIX = Path.home() / ".cache" / "fsd_gs" / "splat-transform"


def find_splat_transform() -> tuple[str | None, str]:
    """(path of the splat-transform CLI, or None; the reason it is missing)."""
    if shutil.which("node") is None:
        return None, "node is not installed (splat-transform needs Node.js >= 18)"
    for candidate in (
        os.environ.get("FSD_GS_SPLAT_TRANSFORM"),
        shutil.which("splat-transform"),
        str(NPM_PREFIX / "node_modules" / ".bin" / "splat-transform"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate, ""
    return None, (
        f"@playcanvas/splat-transform not found: npm install --prefix {NPM_PREFIX} "
        f"@playcanvas/splat-transform@{SPLAT_TRANSFORM_VERSION}"
    )


SPLAT_TRANSFORM, MISSING = find_splat_transform()
needs_splat_transform = pytest.mark.skipif(SPLAT_TRANSFORM is None, reason=MISSING)


def random_gaussians(n: int, sh_degree: int, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    params = {
        "means": torch.rand(n, 3, generator=gen) * 2 - 1,
        "scales": torch.rand(n, 3, generator=gen) * 3 - 6,
        "quats": torch.randn(n, 4, generator=gen) * 2,
        "opacities": torch.rand(n, generator=gen) * 8 - 4,
        "sh0": torch.rand(n, 1, 3, generator=gen) * 3 - 1.5,
        "shN": (torch.rand(n, (sh_degree + 1) ** 2 - 1, 3, generator=gen) - 0.5) * 2,
    }
    params["opacities"][:5] = -9.0  # opacity < 1/255: the compressed .ply leaves these out
    return Gaussians(params, sh_degree)


def read_csv_via_splat_transform(path: Path, tmp_path: Path) -> np.ndarray:
    out = tmp_path / f"{path.name}.csv"
    proc = subprocess.run([SPLAT_TRANSFORM, "-q", "-w", str(path), str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"splat-transform could not read {path.name}: {proc.stdout}{proc.stderr}"
    return np.genfromtxt(out, delimiter=",", names=True, dtype=np.float64)


def match_rows(ours: np.ndarray, theirs: np.ndarray, tol: float) -> np.ndarray:
    """Index into ``ours`` of each row of ``theirs`` (nearest position), asserting a one-to-one match within ``tol``."""
    dist, index = cKDTree(ours).query(theirs)
    assert dist.max() <= tol, f"a position moved by {dist.max():.3g} (tolerance {tol:.3g})"
    assert len(np.unique(index)) == len(index), "two read-back rows matched the same Gaussian"
    return index


def cols(table: np.ndarray, names: list[str]) -> np.ndarray:
    return np.stack([table[name] for name in names], axis=1)


def unit_quats(q: np.ndarray) -> np.ndarray:
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@needs_splat_transform
@pytest.mark.parametrize("sh_degree", [0, 1])
def test_splat_transform_reads_our_ply_compressed_ply_and_splat(tmp_path, sh_degree):
    g = random_gaussians(700, sh_degree)  # 3 chunks of the compressed format, the last one partial
    with torch.no_grad():  # one chunk-sized run of identical colours and scales (degenerate chunk bounds)
        g.params["sh0"][:256] = 0.4
        g.params["scales"][:256] = -4.0
    with pytest.warns(UserWarning, match="left out 5 of 700 Gaussians with opacity <= 1/255"):
        paths = export_gaussians(g, tmp_path, ["ply", "ply_compressed", "splat"])
    p = {k: v.detach().double().numpy() for k, v in g.params.items()}
    n = len(g)

    ply = read_csv_via_splat_transform(paths["ply"], tmp_path)
    assert len(ply) == n
    assert np.array_equal(cols(ply, ["x", "y", "z"]), p["means"].astype(np.float32).astype(np.float64))
    assert np.allclose(cols(ply, ["scale_0", "scale_1", "scale_2"]), p["scales"], atol=1e-6)

    splat = read_csv_via_splat_transform(paths["splat"], tmp_path)
    assert len(splat) == n
    i = match_rows(p["means"], cols(splat, ["x", "y", "z"]), tol=1e-6)
    assert np.allclose(cols(splat, ["scale_0", "scale_1", "scale_2"]), p["scales"][i], atol=1e-4)
    alpha = 1 / (1 + np.exp(-splat["opacity"]))
    assert np.abs(alpha - 1 / (1 + np.exp(-p["opacities"][i]))).max() <= 1.01 / 255
    rgb = np.clip(p["sh0"][i, 0] * SH_C0 + 0.5, 0, 1)
    assert np.abs(np.clip(cols(splat, ["f_dc_0", "f_dc_1", "f_dc_2"]) * SH_C0 + 0.5, 0, 1) - rgb).max() <= 1.01 / 255
    dots = np.abs((unit_quats(cols(splat, [f"rot_{k}" for k in range(4)])) * unit_quats(p["quats"][i])).sum(1))
    assert dots.min() > 0.99  # 8-bit w, x, y, z

    comp = read_csv_via_splat_transform(paths["ply_compressed"], tmp_path)
    visible = 1 / (1 + np.exp(-p["opacities"])) > 1 / 255
    assert len(comp) == visible.sum() == n - 5
    i = match_rows(p["means"], cols(comp, ["x", "y", "z"]), tol=2e-3)  # 11/10/11 bits per chunk's box
    assert visible[i].all()
    assert np.abs(cols(comp, ["scale_0", "scale_1", "scale_2"]) - p["scales"][i]).max() < 5e-3
    assert np.abs(1 / (1 + np.exp(-comp["opacity"])) - 1 / (1 + np.exp(-p["opacities"][i]))).max() <= 1.01 / 255
    assert np.abs(cols(comp, ["f_dc_0", "f_dc_1", "f_dc_2"]) - p["sh0"][i, 0]).max() < 0.02
    dots = np.abs((unit_quats(cols(comp, [f"rot_{k}" for k in range(4)])) * unit_quats(p["quats"][i])).sum(1))
    assert dots.min() > 0.999
    if sh_degree:
        rest = cols(comp, [f"f_rest_{k}" for k in range(9)]).reshape(-1, 3, 3)  # channel-major
        assert np.abs(rest - p["shN"][i].transpose(0, 2, 1)).max() <= 8 / 256 + 1e-6


def _accessor(gltf, index: int) -> np.ndarray:
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[accessor.type]
    assert accessor.componentType == 5126  # FLOAT
    offset = (view.byteOffset or 0) + (accessor.byteOffset or 0)
    data = np.frombuffer(gltf.binary_blob(), dtype="<f4", count=accessor.count * width, offset=offset)
    return data.reshape(accessor.count, width)


def test_glb_has_the_khr_gaussian_splatting_attributes_and_values(tmp_path):
    pygltflib = pytest.importorskip("pygltflib")
    trimesh = pytest.importorskip("trimesh")
    g = random_gaussians(40, 2)
    path = export_gaussians(g, tmp_path, ["glb"])["glb"]
    gltf = pygltflib.GLTF2().load(str(path))
    assert "KHR_gaussian_splatting" in gltf.extensionsUsed
    (primitive,) = gltf.meshes[0].primitives
    assert primitive.mode == 0  # POINTS
    assert primitive.extensions["KHR_gaussian_splatting"]["kernel"] == "ellipse"
    assert primitive.extensions["KHR_gaussian_splatting"]["colorSpace"] == "srgb_rec709_display"
    attrs = {k: v for k, v in vars(primitive.attributes).items() if v is not None}
    sh_names = [f"KHR_gaussian_splatting:SH_DEGREE_{d}_COEF_{c}" for d in range(3) for c in range(2 * d + 1)]
    assert sh_attributes(2) == sh_names
    expected = {
        "POSITION",
        "COLOR_0",
        "KHR_gaussian_splatting:ROTATION",
        "KHR_gaussian_splatting:SCALE",
        "KHR_gaussian_splatting:OPACITY",
        *sh_names,
    }
    assert set(attrs) == expected
    data = {name: _accessor(gltf, index) for name, index in attrs.items()}
    assert all(len(v) == 40 for v in data.values())
    p = {k: v.detach().numpy() for k, v in g.params.items()}
    assert np.array_equal(data["POSITION"], p["means"])
    assert np.allclose(gltf.accessors[attrs["POSITION"]].min, p["means"].min(0))
    assert np.allclose(data["KHR_gaussian_splatting:SCALE"], np.exp(p["scales"]), rtol=1e-6)
    opacity = data["KHR_gaussian_splatting:OPACITY"][:, 0]
    assert np.allclose(opacity, 1 / (1 + np.exp(-p["opacities"])), atol=1e-6) and (opacity >= 0).all() and (opacity <= 1).all()
    q = data["KHR_gaussian_splatting:ROTATION"]
    assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-6)
    assert np.allclose(q, unit_quats(p["quats"])[:, [1, 2, 3, 0]], atol=1e-6)  # glTF x, y, z, w
    assert np.array_equal(data[sh_names[0]], p["sh0"][:, 0])
    for k, name in enumerate(sh_names[1:]):  # degree 1 coef 0 = shN[:, 0] ... degree 2 coef 4 = shN[:, 7]
        assert np.array_equal(data[name], p["shN"][:, k]), name
    srgb = np.clip(p["sh0"][:, 0] * SH_C0 + 0.5, 0, 1)
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    assert np.allclose(data["COLOR_0"][:, :3], linear, atol=1e-5) and np.allclose(data["COLOR_0"][:, 3], opacity)
    # A generic glTF loader sees a point cloud, rotated from our z-up world to glTF's y-up by the node.
    cloud = trimesh.load(str(path), force="scene").to_geometry()
    assert len(cloud.vertices) == 40
    assert np.allclose(cloud.vertices, p["means"] @ Z_UP_TO_Y_UP.T, atol=1e-6)
    assert np.allclose(Z_UP_TO_Y_UP @ [0, 0, 1], [0, 1, 0]) and np.allclose(Z_UP_TO_Y_UP @ [1, 0, 0], [0, 0, 1])


def sphere_of_gaussians(n: int = 2000, radius: float = 0.5) -> Gaussians:
    """Flat Gaussians (discs, 0.03 wide, 0.004 thick) tangent to a sphere; red on top (z > 0), blue below."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi, theta = torch.acos(1 - 2 * i / n), math.pi * (1 + 5**0.5) * i  # Fibonacci sphere
    normal = torch.stack([torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], 1).float()
    ez = torch.tensor([0.0, 0.0, 1.0]).expand_as(normal)
    quats = torch.cat([1 + (ez * normal).sum(1, keepdim=True), torch.linalg.cross(ez, normal)], 1)  # rotates z to normal
    colors = torch.where(normal[:, 2:] > 0, torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))
    params = {
        "means": normal * radius,
        "scales": torch.log(torch.tensor([0.03, 0.03, 0.004])).expand(n, 3).clone(),
        "quats": quats,
        "opacities": torch.full((n,), math.log(0.9 / 0.1)),
        "sh0": rgb_to_sh0(colors)[:, None],
        "shN": torch.zeros(n, 0, 3),
    }
    return Gaussians(params, 0)


def test_mesh_of_a_sphere_of_gaussians_has_its_size_volume_and_colours(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    pytest.importorskip("skimage")
    radius, config = 0.5, MeshConfig(resolution=96)
    mesh = extract_mesh(sphere_of_gaussians(radius=radius), config)
    truth = 4 / 3 * math.pi * radius**3
    loaded = {}
    for fmt in ("glb", "obj", "ply"):
        path = tmp_path / f"s.mesh.{fmt}"
        path.write_bytes(mesh_bytes(mesh, fmt))
        m = trimesh.load(str(path), force="mesh")
        if fmt == "glb":  # y-up in the file: back to our z-up world
            m.apply_transform(np.block([[Z_UP_TO_Y_UP.T, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]]))
        loaded[fmt] = m
        assert m.is_watertight, fmt
        assert abs(m.volume / truth - 1) < 0.10, (fmt, m.volume / truth)
        assert np.abs(m.bounds - [[-radius] * 3, [radius] * 3]).max() < 0.10 * radius, (fmt, m.bounds)
    colours = loaded["ply"].visual.vertex_colors[:, :3].astype(float)
    z = loaded["ply"].vertices[:, 2]
    assert np.allclose(colours[z > 0.2].mean(0), [255, 0, 0], atol=8)
    assert np.allclose(colours[z < -0.2].mean(0), [0, 0, 255], atol=8)
    glb_colours = loaded["glb"].visual.vertex_colors[:, :3].astype(float)  # linear in glTF: pure red stays 255
    assert np.allclose(glb_colours[loaded["glb"].vertices[:, 2] > 0.2].mean(0), [255, 0, 0], atol=8)
    # Without filling, the shell has an inner surface too: the enclosed volume is the thin shell's.
    hollow = extract_mesh(sphere_of_gaussians(radius=radius), MeshConfig(resolution=48, fill_interior=False))
    assert hollow.volume < 0.5 * truth


def test_mesh_without_surface_is_one_sentence_and_writes_nothing(tmp_path):
    g = sphere_of_gaussians(n=200)
    with pytest.raises(UserError, match=r"no surface at --mesh.threshold 50: .* lower the threshold") as info:
        export_gaussians(g, tmp_path, ["mesh"], mesh=MeshConfig(resolution=32, threshold=50.0))
    assert "\n" not in str(info.value) and list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="--mesh.resolution"):
        export_gaussians(g, tmp_path, ["mesh"], mesh=MeshConfig(resolution=4))


def test_non_finite_rows_are_dropped_with_a_count(tmp_path):
    pygltflib = pytest.importorskip("pygltflib")
    g = random_gaussians(50, 1)
    with torch.no_grad():
        g.params["means"][3, 1] = float("nan")
        g.params["opacities"][7] = float("inf")  # one NaN opacity must not drop every row (gsplat 1.5.3 would)
        g.params["shN"][9, 2, 0] = float("-inf")
    write_ply(g, tmp_path / "model.ply")
    with pytest.warns(NonFiniteWarning, match="dropped 3 of 50 Gaussians with NaN or Inf") as record:
        paths = export_gaussians(read_ply(tmp_path / "model.ply"), tmp_path / ".", ["splat", "glb"], stem="clean")
    assert len([w for w in record if issubclass(w.category, NonFiniteWarning)]) == 1  # once per export, not per file
    assert paths["splat"].stat().st_size == 47 * 32
    gltf = pygltflib.GLTF2().load(str(paths["glb"]))
    assert all(a.count == 47 for a in gltf.accessors)
    assert np.isfinite(np.frombuffer(gltf.binary_blob(), dtype="<f4")).all()


def test_cli_writes_next_to_the_run_and_refuses_to_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    g = random_gaussians(30, 0)
    with torch.no_grad():
        g.params["scales"][0, 0] = float("nan")
    write_ply(g, run / "model.ply")
    assert main([str(run), "--to", "splat", "ply_compressed", "glb"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [str(run / "model.splat"), str(run / "model.compressed.ply"), str(run / "model.glb")]
    assert "warning: dropped 1 of 30 Gaussians with NaN or Inf" in err
    before = (run / "model.splat").read_bytes()
    assert main([str(run / "model.ply"), "--to", "glb", "splat"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and err.startswith("error: ") and err.count("\n") == 1
    assert (run / "model.splat").read_bytes() == before
    write_ply(random_gaussians(20, 0, seed=1), run / "model.ply")
    assert main([str(run), "--to", "splat", "--overwrite"]) == 0
    assert (run / "model.splat").stat().st_size == 20 * 32
    assert sorted(p.name for p in run.iterdir()) == ["model.compressed.ply", "model.glb", "model.ply", "model.splat"]
    out_dir = tmp_path / "elsewhere"
    out_dir.mkdir()
    assert main([str(run), "--to", "ply", "--out-dir", str(out_dir), "--stem", "copy"]) == 0
    assert len(read_ply(out_dir / "copy.ply")) == 20


def test_cli_bad_format_and_missing_path_exit_2_with_one_sentence(tmp_path, capsys):
    write_ply(random_gaussians(5, 0), tmp_path / "g.ply")
    assert main([str(tmp_path / "g.ply"), "--to", "splat", "fbx"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: unknown export format 'fbx': choose one or more of {', '.join(FORMATS)}\n"
    assert main([str(tmp_path / "missing"), "--to", "splat"]) == 2
    assert capsys.readouterr().err == f"error: no such file or folder: {tmp_path / 'missing'}\n"
    assert main([str(tmp_path), "--to", "splat"]) == 2  # a folder without model.ply
    assert "holds no model.ply" in capsys.readouterr().err
    assert list(p.name for p in tmp_path.iterdir()) == ["g.ply"]
    with pytest.raises(UserError, match="no export format"):
        validate_formats([])
    assert validate_formats(["glb", "splat", "glb"]) == ("glb", "splat")
    # The real entry point: python -m fsd_gs.export
    proc = subprocess.run(
        [sys.executable, "-m", "fsd_gs.export", str(tmp_path / "g.ply"), "--to", "obj"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown export format 'obj'") and proc.stdout == ""
