"""Real spherical harmonics up to degree 3, in gsplat's (and 3DGS's) convention.

The colour of a Gaussian seen along the unit direction d = normalize(mean - camera centre) is
``clamp_min(sum_k Y_k(d) c_k + 0.5, 0)`` with the basis order and signs used by gsplat's
``spherical_harmonics`` (Sloan's "Efficient Spherical Harmonic Evaluation", JCGT 2013).
"""

from __future__ import annotations

import torch

from fsd_gs.errors import UserError, require

# Normalisation constants of the real SH basis, by degree.
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, 0.31539156525252005, 0.5462742152960396, 0.9461746957575601)
_C3 = (0.5900435899266435, 1.445305721320277, 2.285228997322329, 0.4570457994644658, 1.865881662950577, 1.119528997770346)


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """The (degree+1)^2 basis functions at unit directions: dirs [...,3] -> [...,(degree+1)^2]."""
    require(0 <= degree <= 3, f"SH degree must be 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, _C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    xx, yy, zz = x * x, y * y, z * z  # for degrees 2 and 3
    if degree >= 2:
        out += [
            _C2[0] * x * y,
            -_C2[0] * y * z,
            _C2[3] * zz - _C2[1],
            -_C2[0] * x * z,
            _C2[2] * (xx - yy),
        ]
    if degree >= 3:
        c1 = xx - yy  # cos(2 phi) part
        s1 = 2.0 * x * y  # sin(2 phi) part
        c2 = x * c1 - y * s1  # cos(3 phi) part
        s2 = x * s1 + y * c1  # sin(3 phi) part
        tmp_c = _C3[3] - _C3[2] * zz
        tmp_b = _C3[1] * z
        out += [
            -_C3[0] * s2,
            tmp_b * s1,
            tmp_c * y,
            z * (_C3[4] * zz - _C3[5]),
            tmp_c * x,
            tmp_b * c1,
            -_C3[0] * c2,
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, coeffs: torch.Tensor, dirs: torch.Tensor | None) -> torch.Tensor:
    """Raw SH value sum_k Y_k(normalize(dirs)) c_k: coeffs [...,K,3], dirs [...,3] -> [...,3].

    Only the first (degree+1)^2 coefficients are used (K may be larger). ``dirs`` need not be unit
    length and may be None for degree 0.
    """
    n_bases = (degree + 1) ** 2
    require(coeffs.shape[-2] >= n_bases, f"SH degree {degree} needs {n_bases} coefficients, got {coeffs.shape[-2]}")
    if degree == 0:
        return _C0 * coeffs[..., 0, :]
    if dirs is None:
        raise UserError("SH of degree >= 1 needs view directions")
    unit = torch.nn.functional.normalize(dirs, dim=-1)
    basis = sh_basis(degree, unit)  # [...,n_bases]
    return (basis.unsqueeze(-1) * coeffs[..., :n_bases, :]).sum(dim=-2)


def sh_to_color(degree: int, coeffs: torch.Tensor, dirs: torch.Tensor | None) -> torch.Tensor:
    """Gaussian colours as gsplat renders them: clamp_min(eval_sh + 0.5, 0), [...,3]."""
    return torch.clamp_min(eval_sh(degree, coeffs, dirs) + 0.5, 0.0)
