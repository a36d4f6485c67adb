""".ply (INRIA 3DGS layout) I/O: exact round trips, other tools' files, damaged files, atomic writes."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from numpy.lib.recfunctions import repack_fields
from plyfile import PlyData, PlyElement

from fsd_gs.errors import UserError
from fsd_gs.export.splats import write_splat
from fsd_gs.gaussians import PARAM_KEYS, Gaussians
from fsd_gs.io.atomic import atomic_open, atomic_write_bytes
from fsd_gs.io.ply import ply_property_names, read_ply, write_ply


def random_gaussians(n: int, sh_degree: int, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2 - 1
    params = {
        "means": torch.randn(n, 3, generator=gen) * 1e3,  # wide dynamic range: exactness must not depend on it
        "scales": torch.randn(n, 3, generator=gen) - 4.0,
        "quats": torch.randn(n, 4, generator=gen),
        "opacities": torch.randn(n, generator=gen) * 5.0,
        "sh0": torch.randn(n, 1, 3, generator=gen),
        "shN": torch.randn(n, k, 3, generator=gen) * 1e-7,
    }
    params["means"][0, 0] = -0.0
    params["opacities"][-1] = 3.4e38
    return Gaussians(params, sh_degree)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


@pytest.mark.parametrize("degree", [0, 3])
def test_round_trip_is_bitwise_exact(tmp_path, degree):
    g = random_gaussians(257, degree)
    path = write_ply(g, tmp_path / "g.ply")
    back = read_ply(path)
    assert back.sh_degree == degree and back.active_sh_degree == degree and len(back) == 257
    for key in PARAM_KEYS:
        assert back.params[key].dtype == torch.float32
        assert torch.equal(bits(back.params[key]), bits(g.params[key])), key
    assert path.stat().st_size == len(open(path, "rb").read().split(b"end_header\n")[0]) + 11 + 257 * 62 * 4


def test_layout_is_inria_channel_major_and_zero_padded_per_channel(tmp_path):
    g = random_gaussians(5, 1)
    write_ply(g, tmp_path / "g.ply")
    ply = PlyData.read(str(tmp_path / "g.ply"))
    v = ply["vertex"]
    assert ply.elements[0].name == "vertex" and not ply.text and ply.byte_order == "<"
    assert [p.name for p in v.properties] == ply_property_names()
    assert ply_property_names()[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert ply_property_names()[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(p.val_dtype == "f4" for p in v.properties)
    shN = g.params["shN"].detach().numpy()  # [5, 3 coefficients, 3 channels]
    for c in range(3):
        for k in range(15):
            expected = shN[:, k, c] if k < 3 else np.zeros(5, np.float32)
            assert np.array_equal(v[f"f_rest_{c * 15 + k}"], expected), (c, k)
    assert np.array_equal(v["f_dc_1"], g.params["sh0"].detach().numpy()[:, 0, 1])
    assert np.array_equal(v["rot_0"], g.params["quats"].detach().numpy()[:, 0])  # w first
    assert np.array_equal(v["opacity"], g.params["opacities"].detach().numpy())  # raw logits
    assert not np.any(v["nx"]) and not np.any(v["ny"]) and not np.any(v["nz"])


def test_degree_can_be_raised_with_zeros_or_lowered_on_reading(tmp_path):
    g = random_gaussians(4, 2)
    write_ply(g, tmp_path / "g.ply")
    up = read_ply(tmp_path / "g.ply", sh_degree=3)
    assert up.params["shN"].shape == (4, 15, 3)
    assert torch.equal(up.params["shN"][:, :8], g.params["shN"]) and not up.params["shN"][:, 8:].any()
    down = read_ply(tmp_path / "g.ply", sh_degree=0)
    assert down.params["shN"].shape == (4, 0, 3) and torch.equal(down.params["sh0"], g.params["sh0"])
    with pytest.raises(UserError, match="sh_degree"):
        read_ply(tmp_path / "g.ply", sh_degree=4)


def test_reads_another_tools_layout_any_order_extra_properties_and_types(tmp_path):
    n = 6
    rng = np.random.default_rng(0)
    rest = rng.standard_normal((n, 3, 15)).astype(np.float32)  # channel-major as in INRIA
    cols = {
        "x": rng.standard_normal(n),
        "y": rng.standard_normal(n),
        "z": rng.standard_normal(n),
        "opacity": rng.standard_normal(n),
        **{f"scale_{i}": rng.standard_normal(n) for i in range(3)},
        **{f"rot_{i}": rng.standard_normal(n) for i in range(4)},
        **{f"f_dc_{i}": rng.standard_normal(n) for i in range(3)},
    }
    cols = {k: v.astype(np.float32) for k, v in cols.items()}
    fields = [("rot_3", "f4"), ("rot_2", "f4"), ("rot_1", "f4"), ("rot_0", "f4"), ("filter_3D", "f4"), ("red", "u1")]
    fields += [(f"f_rest_{i}", "f4") for i in reversed(range(45))]
    fields += [
        ("opacity", "f8"),
        ("scale_2", "f4"),
        ("scale_1", "f4"),
        ("scale_0", "f4"),
        ("f_dc_2", "f4"),
        ("f_dc_1", "f4"),
        ("f_dc_0", "f4"),
        ("z", "f4"),
        ("y", "f4"),
        ("x", "f4"),
    ]
    data = np.zeros(n, dtype=fields)
    for name, value in cols.items():
        data[name] = value
    for i in range(45):
        data[f"f_rest_{i}"] = rest.reshape(n, 45)[:, i]
    data["red"] = 200
    faces = np.zeros(1, dtype=[("vertex_indices", "i4", (3,))])
    PlyData([PlyElement.describe(faces, "face"), PlyElement.describe(data, "vertex")], byte_order=">").write(
        str(tmp_path / "other.ply")
    )

    g = read_ply(tmp_path / "other.ply")
    assert g.sh_degree == 3 and len(g) == n
    assert torch.equal(g.params["means"], torch.from_numpy(np.stack([cols["x"], cols["y"], cols["z"]], 1)))
    assert torch.equal(g.params["quats"], torch.from_numpy(np.stack([cols[f"rot_{i}"] for i in range(4)], 1)))
    assert torch.equal(g.params["opacities"], torch.from_numpy(cols["opacity"]))
    assert torch.equal(g.params["shN"], torch.from_numpy(rest).transpose(1, 2))  # [N,15,3]: shN[:,k,c] = f_rest_{15c+k}


def test_reads_gsplats_exporter_and_ascii_files(tmp_path):
    exporter = pytest.importorskip("gsplat.exporter")
    g = random_gaussians(7, 1)
    p = {k: v.detach() for k, v in g.params.items()}
    exporter.export_splats(
        p["means"],
        p["scales"],
        p["quats"],
        p["opacities"],
        p["sh0"],
        p["shN"],
        format="ply",
        save_to=str(tmp_path / "gsplat.ply"),
    )  # 9 f_rest, no normals
    back = read_ply(tmp_path / "gsplat.ply")
    assert back.sh_degree == 1
    for key in PARAM_KEYS:
        assert torch.equal(back.params[key], g.params[key]), key

    write_ply(g, tmp_path / "ours.ply")
    ply = PlyData.read(str(tmp_path / "ours.ply"))
    ascii_ply = PlyData([PlyElement.describe(ply["vertex"].data, "vertex")], text=True)
    ascii_ply.write(str(tmp_path / "ascii.ply"))
    back = read_ply(tmp_path / "ascii.ply", sh_degree=1)
    assert torch.allclose(back.params["means"], g.params["means"], rtol=1e-6)


def test_missing_truncated_and_foreign_files_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_ply(tmp_path / "nope.ply")
    write_ply(random_gaussians(50, 0), tmp_path / "g.ply")
    blob = (tmp_path / "g.ply").read_bytes()
    (tmp_path / "cut.ply").write_bytes(blob[: len(blob) - 100])
    (tmp_path / "junk.ply").write_bytes(b"\x00\x01 not a ply at all")
    (tmp_path / "header_only.ply").write_bytes(blob[:200])
    mesh = np.zeros(4, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    faces = np.zeros(2, dtype=[("vertex_indices", "i4", (3,))])
    PlyData([PlyElement.describe(mesh, "vertex"), PlyElement.describe(faces, "face")]).write(str(tmp_path / "mesh.ply"))
    PlyData([PlyElement.describe(mesh, "points")]).write(str(tmp_path / "novertex.ply"))
    cases = {
        "cut.ply": "truncated or damaged",
        "junk.ply": "could not be read",
        "header_only.ply": "could not be read",
        "mesh.ply": "f_dc_0, f_dc_1, f_dc_2, opacity, scale_0",
        "novertex.ply": "no 'vertex' element",
    }
    for name, message in cases.items():
        with pytest.raises(UserError, match=message) as info:
            read_ply(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)
    with pytest.raises(UserError, match="is not a file"):
        read_ply(tmp_path)


def test_missing_property_is_named_and_odd_sh_counts_rejected(tmp_path):
    ply = PlyData.read(str(write_ply(random_gaussians(3, 1), tmp_path / "g.ply")))
    data = ply["vertex"].data
    without = [name for name in data.dtype.names if name != "scale_1"]
    PlyData([PlyElement.describe(repack_fields(data[without]), "vertex")]).write(str(tmp_path / "no_scale.ply"))
    with pytest.raises(UserError, match=r"missing the Gaussian properties scale_1;"):
        read_ply(tmp_path / "no_scale.ply")
    odd = [name for name in data.dtype.names if name != "f_rest_44"]
    PlyData([PlyElement.describe(repack_fields(data[odd]), "vertex")]).write(str(tmp_path / "odd.ply"))
    with pytest.raises(UserError, match="44 f_rest"):
        read_ply(tmp_path / "odd.ply")


def test_empty_sets_are_refused_both_ways(tmp_path):
    g = random_gaussians(3, 0)
    empty = Gaussians({k: v.detach()[:0] for k, v in g.params.items()}, 0)
    with pytest.raises(UserError, match="empty"):
        write_ply(empty, tmp_path / "e.ply")
    with pytest.raises(UserError, match="empty"):
        write_splat(empty, tmp_path / "e.splat")
    assert list(tmp_path.iterdir()) == []
    data = PlyData.read(str(write_ply(g, tmp_path / "g.ply")))["vertex"].data[:0]
    PlyData([PlyElement.describe(data, "vertex")]).write(str(tmp_path / "zero.ply"))
    with pytest.raises(UserError, match="no Gaussians"):
        read_ply(tmp_path / "zero.ply")


def test_atomic_writes_leave_no_temp_file_and_keep_the_old_file_on_failure(tmp_path):
    target = tmp_path / "model.ply"
    write_ply(random_gaussians(10, 0), target)
    write_ply(random_gaussians(20, 0, seed=1), target)  # replaced
    assert [p.name for p in tmp_path.iterdir()] == ["model.ply"] and len(read_ply(target)) == 20
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode & 0o044 == 0o044 & ~_umask()  # not mkstemp's 0600
    old = target.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(target) as f:
            f.write(b"half a file")
            raise RuntimeError("boom")
    assert target.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["model.ply"]
    with pytest.raises(UserError, match="does not exist"):
        atomic_write_bytes(tmp_path / "missing" / "x.bin", b"x")
    atomic_write_bytes(tmp_path / "x.bin", b"abc")
    assert (tmp_path / "x.bin").read_bytes() == b"abc"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
