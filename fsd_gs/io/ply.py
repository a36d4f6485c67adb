"""Gaussians to and from .ply files in the INRIA 3D Gaussian Splatting layout.

The layout (what the INRIA code, its SIBR viewer, gsplat's exporter, SuperSplat, antimatter15's
converter and most 3DGS tools read) is one ``vertex`` element, binary little-endian float32, with:

    x y z                  means
    nx ny nz               normals (unused by 3DGS; written as zeros)
    f_dc_0 f_dc_1 f_dc_2   sh0, the DC colour coefficient of R, G, B
    f_rest_0 .. f_rest_44  shN, CHANNEL-MAJOR: f_rest_0..14 are the 15 higher coefficients of R,
                           f_rest_15..29 those of G, f_rest_30..44 those of B
                           (INRIA: ``features_rest.transpose(1, 2).flatten(1)``; gsplat's exporter
                           does the same with ``shN.permute(0, 2, 1)``)
    opacity                logit of the opacity
    scale_0 scale_1 scale_2  log of the standard deviations
    rot_0 .. rot_3         quaternion w, x, y, z (not necessarily normalised)

Values are stored raw (log-scales, logit opacities), exactly as trained. We always write degree-3
room (45 f_rest values, zero-padded per channel) because the INRIA/SIBR viewer only reads that
layout; a header comment ``fsd_gs sh_degree D`` records the degree that was trained so that
:func:`read_ply` gives back exactly what was written (bitwise for float32 parameters). Other tools
ignore comments.

Reading accepts files from other tools: 0, 9, 24 or 45 f_rest values (SH degree 0..3), any property
order, any numeric property type, ASCII or either endianness, extra properties and elements (ignored).
Anything else (a missing file, a truncated one, a mesh or point cloud without Gaussian properties) is a
:class:`~fsd_gs.errors.UserError` with one line saying what is wrong.

Empty sets are refused in both directions: :func:`write_ply` raises a UserError for zero Gaussians
(an empty asset is never the intended output and several viewers choke on zero vertices), and
:func:`read_ply` raises one for a file with zero vertices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fsd_gs.errors import UserError
from fsd_gs.gaussians import Gaussians, num_sh_bases
from fsd_gs.io.atomic import atomic_open

MAX_SH_DEGREE = 3
REST_PER_CHANNEL = num_sh_bases(MAX_SH_DEGREE) - 1  # 15
DEGREE_COMMENT = "fsd_gs sh_degree"
"""Header comment that records the SH degree the Gaussians were trained with."""

POSITION = ["x", "y", "z"]
NORMAL = ["nx", "ny", "nz"]
DC = [f"f_dc_{i}" for i in range(3)]
SCALE = [f"scale_{i}" for i in range(3)]
ROT = [f"rot_{i}" for i in range(4)]
REQUIRED = POSITION + DC + ["opacity"] + SCALE + ROT
"""Properties a Gaussian .ply must have (normals and f_rest are optional on reading)."""


def ply_property_names() -> list[str]:
    """The 62 properties :func:`write_ply` writes, in file order."""
    rest = [f"f_rest_{i}" for i in range(3 * REST_PER_CHANNEL)]
    return POSITION + NORMAL + DC + rest + ["opacity"] + SCALE + ROT


def _rows(gaussians: Gaussians) -> np.ndarray:
    """The Gaussians as a C-contiguous little-endian float32 table [N, 62] in :func:`ply_property_names` order."""
    p = {k: v.detach().to("cpu", torch.float32) for k, v in gaussians.params.items()}
    n = p["means"].shape[0]
    rest = torch.zeros(n, 3, REST_PER_CHANNEL, dtype=torch.float32)
    k = p["shN"].shape[1]
    rest[:, :, :k] = p["shN"].transpose(1, 2)  # [N,3,K-1]: channel-major, zero-padded per channel
    table = torch.cat(
        [
            p["means"],
            torch.zeros(n, 3),
            p["sh0"].reshape(n, 3),
            rest.reshape(n, -1),
            p["opacities"].reshape(n, 1),
            p["scales"],
            p["quats"],
        ],
        dim=1,
    )
    return np.ascontiguousarray(table.numpy(), dtype="<f4")


def ply_header(num_gaussians: int, sh_degree: int) -> bytes:
    """The ASCII header :func:`write_ply` writes (ends with ``end_header\\n``)."""
    lines = ["ply", "format binary_little_endian 1.0", f"comment {DEGREE_COMMENT} {sh_degree}", f"element vertex {num_gaussians}"]
    lines += [f"property float {name}" for name in ply_property_names()]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def write_ply(gaussians: Gaussians, path: str | Path) -> Path:
    """Write ``gaussians`` to ``path`` in the INRIA 3DGS layout (see the module doc), atomically.

    Args:
        gaussians: N >= 1 Gaussians on any device (copied to the CPU as float32).
        path: the .ply to write; its folder must exist. An existing file is replaced only once the
            new one is complete.
    Returns:
        ``path`` as a Path.
    Raises:
        UserError: the set is empty, or the file cannot be written.
    """
    path = Path(path)
    if len(gaussians) == 0:
        raise UserError(f"not writing {path}: the Gaussian set is empty (nothing to export)")
    table = _rows(gaussians)
    with atomic_open(path) as f:
        f.write(ply_header(table.shape[0], gaussians.sh_degree))
        f.write(table.data.cast("B"))  # the array's own buffer as bytes (no copy)
    return path


def ply_bytes(gaussians: Gaussians) -> bytes:
    """The whole file :func:`write_ply` writes, as bytes (N >= 1 Gaussians; the export registry's ``ply`` format)."""
    if len(gaussians) == 0:
        raise UserError("not writing the .ply: the Gaussian set is empty (nothing to export)")
    table = _rows(gaussians)
    return ply_header(table.shape[0], gaussians.sh_degree) + table.tobytes()


# -- reading --------------------------------------------------------------------------------------
def _degree_from_comments(comments: list[str]) -> Optional[int]:
    for comment in comments:
        parts = comment.split()
        if " ".join(parts[:2]) == DEGREE_COMMENT and len(parts) == 3 and parts[2].isdigit():
            return int(parts[2])
    return None


def _rest_count(path: Path, names: list[str]) -> int:
    """Number of f_rest_i properties; they must be f_rest_0 .. f_rest_{M-1} with M in 0, 9, 24, 45."""
    indices = sorted(int(name[7:]) for name in names if name.startswith("f_rest_") and name[7:].isdigit())
    m = len(indices)
    valid = [3 * (num_sh_bases(d) - 1) for d in range(MAX_SH_DEGREE + 1)]
    if indices != list(range(m)) or m not in valid:
        raise UserError(
            f"{path} has {m} f_rest_* properties (f_rest_0..f_rest_{m - 1} expected, numbered without gaps, "
            f"and one of {valid} for SH degree 0..3): it is not a valid 3D Gaussian Splatting .ply"
        )
    return m


def read_ply(path: str | Path, sh_degree: Optional[int] = None) -> Gaussians:
    """Read Gaussians from a 3DGS .ply (ours or another tool's; see the module doc).

    Args:
        path: the .ply file.
        sh_degree: SH degree of the result (0..3). None: the degree recorded by :func:`write_ply`, or
            else the degree implied by the number of f_rest properties. A higher degree than the file's
            is zero-padded, a lower one drops the higher coefficients.
    Returns:
        :class:`Gaussians` on the CPU, float32, with ``active_sh_degree = sh_degree``.
    Raises:
        UserError: the file is missing, unreadable, truncated, empty or not a Gaussian .ply.
    """
    from plyfile import PlyData

    path = Path(path)
    if sh_degree is not None and not 0 <= sh_degree <= MAX_SH_DEGREE:
        raise UserError(f"sh_degree must be 0..{MAX_SH_DEGREE} to read {path}, got {sh_degree}")
    if not path.exists():
        raise UserError(f"no such file: {path}")
    if not path.is_file():
        raise UserError(f"{path} is not a file (a .ply file is expected)")
    try:
        with open(path, "rb") as f:
            ply = PlyData.read(f)
            elements = {element.name: element for element in ply.elements}
            if "vertex" not in elements:
                found = ", ".join(repr(name) for name in elements) or "none"
                raise UserError(
                    f"{path} has no 'vertex' element (elements found: {found}); it is not a 3D Gaussian Splatting .ply"
                )
            vertex = elements["vertex"]
            names = [prop.name for prop in vertex.properties]
            missing = [name for name in REQUIRED if name not in names]
            if missing:
                hint = (
                    "; it looks like a compressed .ply (decompress it first, e.g. with SuperSplat)"
                    if "chunk" in elements
                    else "; it looks like a mesh or point cloud, not 3D Gaussian Splatting"
                )
                raise UserError(f"{path} is missing the Gaussian properties {', '.join(missing)}{hint}")
            m = _rest_count(path, names)
            n = int(vertex.count)
            if n == 0:
                raise UserError(f"{path} contains no Gaussians (its vertex element is empty)")
            data = vertex.data
            columns = POSITION + DC + [f"f_rest_{i}" for i in range(m)] + ["opacity"] + SCALE + ROT
            table = np.empty((n, len(columns)), dtype=np.float32)
            for j, name in enumerate(columns):
                table[:, j] = data[name]
            comments = list(ply.comments)
    except UserError:
        raise
    except Exception as exc:  # plyfile / numpy / OS errors: damaged or foreign file
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} could not be read as a .ply file ({message}); it may be truncated or damaged") from exc

    file_degree = {3 * (num_sh_bases(d) - 1): d for d in range(MAX_SH_DEGREE + 1)}[m]
    if sh_degree is None:
        recorded = _degree_from_comments(comments)
        sh_degree = recorded if recorded is not None and recorded <= file_degree else file_degree

    t = torch.from_numpy(table)
    means, sh0 = t[:, 0:3], t[:, 3:6].reshape(n, 1, 3)
    rest = t[:, 6 : 6 + m].reshape(n, 3, m // 3).transpose(1, 2)  # channel-major -> [N, K-1, 3]
    tail = t[:, 6 + m :]
    k = num_sh_bases(sh_degree) - 1
    shN = torch.zeros(n, k, 3, dtype=torch.float32)
    shN[:, : min(k, m // 3)] = rest[:, :k]
    params = {
        "means": means.clone(),
        "sh0": sh0.clone(),
        "shN": shN,
        "opacities": tail[:, 0].clone(),
        "scales": tail[:, 1:4].clone(),
        "quats": tail[:, 4:8].clone(),
    }
    return Gaussians(params, sh_degree, active_sh_degree=sh_degree)
