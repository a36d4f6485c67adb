"""3D Gaussians: parameters, activations, initialisation and optimizers.

Parameters follow gsplat's convention, one tensor per key in a ``torch.nn.ParameterDict`` (what
``gsplat.strategy`` expects), and one Adam optimizer per key with its own learning rate:

    means      [N,3]      world positions
    scales     [N,3]      log of the per-axis standard deviations
    quats      [N,4]      rotations, wxyz, not necessarily normalised
    opacities  [N]        logit of opacity
    sh0        [N,1,3]    degree-0 spherical-harmonic (DC) colour coefficients
    shN        [N,K-1,3]  higher-order SH coefficients, K = (sh_degree + 1)^2 (K-1 may be 0)

The colour of a Gaussian seen from direction d is ``clamp(SH(d) + 0.5, 0)``, as in 3DGS and gsplat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from fsd_gs.errors import UserError, require

SH_C0 = 0.28209479177387814
"""The degree-0 spherical harmonic, 1 / (2 sqrt(pi))."""

PARAM_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per colour channel for ``degree``: (degree + 1)^2."""
    return (degree + 1) ** 2


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """DC coefficients from colours in [0,1]: [...,3] -> [...,3]."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """Colours (view-independent part) from DC coefficients: [...,3] -> [...,3]."""
    return sh0 * SH_C0 + 0.5


MAX_NUM_POINTS = 10_000_000
"""The most Gaussians a run may start with (large 3DGS scenes hold a few million)."""


def training_bytes(num_points: int, sh_degree: int) -> int:
    """Rough memory of ``num_points`` Gaussians in training: parameter, gradient and two Adam moments per float."""
    floats = 3 + 3 + 4 + 1 + 3 * (sh_degree + 1) ** 2  # means, log-scales, quaternions, opacity, SH colours
    return num_points * floats * 4 * 4


@dataclass
class GaussiansConfig:
    """How the Gaussians are initialised."""

    num_points: int = 4096
    """Number of Gaussians at initialisation (random init), 1 to 10,000,000 (and no more than the memory holds)."""
    init_radius: float = 0.5
    """Radius of the ball the random means are drawn in (world units; cameras orbit at ~2.5)."""
    init_color: Optional[tuple[float, float, float]] = None
    """RGB in [0,1] for every initial Gaussian; None draws a random colour per Gaussian."""
    init_opacity: float = 0.1
    """Opacity of every initial Gaussian, in (0,1)."""
    init_scale_factor: float = 1.0
    """Initial scale = factor x mean distance to the 3 nearest neighbours."""
    sh_degree: int = 0
    """Maximum SH degree stored (0..3). Text-to-3D usually keeps 0 (view-independent colour)."""
    sh_degree_interval: int = 1000
    """Raise the active SH degree by one every this many steps until sh_degree."""
    init_ply: Optional[str] = None
    """Start from this .ply (INRIA 3DGS layout) instead of random points."""

    def validate(self) -> None:
        require(
            1 <= self.num_points <= MAX_NUM_POINTS,
            f"--gaussians.num-points must lie in 1..{MAX_NUM_POINTS:,}, got {self.num_points:,}",
        )
        require(self.init_radius > 0, f"gaussians.init_radius must be positive, got {self.init_radius}")
        require(0.0 < self.init_opacity < 1.0, f"gaussians.init_opacity must lie in (0, 1), got {self.init_opacity}")
        require(0 <= self.sh_degree <= 3, f"gaussians.sh_degree must be 0..3, got {self.sh_degree}")
        if self.init_color is not None:
            require(all(0.0 <= c <= 1.0 for c in self.init_color), "gaussians.init_color must be RGB in [0, 1]")


@dataclass
class LearningRates:
    """Adam learning rate per parameter group (means decay to ``means_final`` over the run)."""

    means: float = 1e-3
    """Initial learning rate of the means (world units)."""
    means_final: float = 2e-5
    """Learning rate of the means at the last step (exponential decay)."""
    scales: float = 5e-3
    """Learning rate of the log-scales."""
    quats: float = 1e-3
    """Learning rate of the quaternions."""
    opacities: float = 5e-2
    """Learning rate of the logit-opacities."""
    sh0: float = 1e-2
    """Learning rate of the DC colour."""
    shN: float = 5e-4
    """Learning rate of the higher SH coefficients."""

    def validate(self) -> None:
        for key in (*PARAM_KEYS, "means_final"):
            require(getattr(self, key) >= 0, f"optim.lr.{key} must be >= 0")


class Gaussians:
    """A set of N Gaussians: a ParameterDict plus the SH degrees.

    Attributes:
        params: ``torch.nn.ParameterDict`` with the keys of :data:`PARAM_KEYS` (shapes in the module doc).
        sh_degree: the maximum SH degree that ``shN`` has room for.
        active_sh_degree: the degree used for rendering now (<= sh_degree).
    """

    def __init__(self, params: dict[str, torch.Tensor], sh_degree: int, active_sh_degree: int | None = None) -> None:
        missing = [k for k in PARAM_KEYS if k not in params]
        if missing:
            raise UserError(f"Gaussian parameters are missing {missing}")
        n = params["means"].shape[0]
        expected = {
            "means": (n, 3),
            "scales": (n, 3),
            "quats": (n, 4),
            "opacities": (n,),
            "sh0": (n, 1, 3),
            "shN": (n, num_sh_bases(sh_degree) - 1, 3),
        }
        for key, shape in expected.items():
            if tuple(params[key].shape) != shape:
                raise UserError(f"Gaussian parameter {key!r} has shape {tuple(params[key].shape)}, expected {shape}")
        self.params = torch.nn.ParameterDict(
            {k: v if isinstance(v, torch.nn.Parameter) else torch.nn.Parameter(v) for k, v in params.items()}
        )
        self.sh_degree = sh_degree
        self.active_sh_degree = sh_degree if active_sh_degree is None else min(active_sh_degree, sh_degree)

    # -- sizes and activations -------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    @property
    def means(self) -> torch.Tensor:
        return self.params["means"]

    @property
    def scales(self) -> torch.Tensor:
        """Activated standard deviations, [N,3]."""
        return torch.exp(self.params["scales"])

    @property
    def quats(self) -> torch.Tensor:
        """Unit quaternions, wxyz, [N,4]."""
        return torch.nn.functional.normalize(self.params["quats"], dim=-1)

    @property
    def opacities(self) -> torch.Tensor:
        """Activated opacities in (0,1), [N]."""
        return torch.sigmoid(self.params["opacities"])

    @property
    def sh_coeffs(self) -> torch.Tensor:
        """All SH coefficients, [N,K,3] with K = (sh_degree + 1)^2."""
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)

    @property
    def base_colors(self) -> torch.Tensor:
        """View-independent colours from the DC term, clamped to [0,1], [N,3]."""
        return sh0_to_rgb(self.params["sh0"][:, 0]).clamp(0.0, 1.0)

    def step_sh_degree(self, step: int, interval: int) -> None:
        """Raise the active SH degree to ``step // interval`` (capped at sh_degree)."""
        if interval > 0:
            self.active_sh_degree = min(self.sh_degree, step // interval)

    def ensure_not_empty(self) -> None:
        if len(self) == 0:
            raise UserError("the Gaussian set is empty (every Gaussian was pruned): lower the pruning thresholds")

    # -- state ----------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """Detached copies of the raw parameters (for checkpoints and export)."""
        return {k: v.detach().clone() for k, v in self.params.items()}

    def to(self, device: torch.device | str) -> Gaussians:
        return Gaussians({k: v.detach().to(device) for k, v in self.params.items()}, self.sh_degree, self.active_sh_degree)


# -- initialisation -------------------------------------------------------------------------------
def knn_mean_distance(points: torch.Tensor, k: int = 3, max_elements: int = 1 << 27) -> torch.Tensor:
    """Mean distance from each point to its ``k`` nearest other points, [N,3] -> [N].

    The 3DGS reference uses the ``simple-knn`` CUDA extension for this; it is not on any registry
    (PyPI's "simple-knn" is an unrelated classifier), so we use torch on the GPU (chunked ``cdist``)
    and scipy's cKDTree on the CPU.
    """
    n = points.shape[0]
    if n <= 1:
        return torch.ones(n, dtype=points.dtype, device=points.device)
    k = min(k, n - 1)
    if points.device.type == "cpu":
        from scipy.spatial import KDTree  # cKDTree's documented equivalent (same code); pyright cannot see cKDTree

        pts = points.detach().double().numpy()
        dist, _ = KDTree(pts).query(pts, k=k + 1)  # the first neighbour is the point itself
        return torch.from_numpy(np.asarray(dist[:, 1:]).mean(axis=1)).to(points.dtype)
    return knn_mean_distance_torch(points, k, max_elements)


def knn_mean_distance_torch(points: torch.Tensor, k: int = 3, max_elements: int = 1 << 27) -> torch.Tensor:
    """The torch (GPU) path of :func:`knn_mean_distance`: blocks of rows of ``cdist`` with bounded memory."""
    n = points.shape[0]
    k = min(k, n - 1)
    out = torch.empty(n, dtype=points.dtype, device=points.device)
    chunk = max(1, max_elements // n)  # rows per distance block: at most max_elements distances at a time
    for start in range(0, n, chunk):
        d = torch.cdist(points[start : start + chunk], points)
        out[start : start + chunk] = d.topk(k + 1, dim=1, largest=False).values[:, 1:].mean(dim=1)
    return out


def gaussians_from_points(
    means: torch.Tensor, colors: torch.Tensor, opacity: float, sh_degree: int, scale_factor: float = 1.0
) -> Gaussians:
    """Isotropic Gaussians at ``means`` [N,3] with ``colors`` [N,3] in [0,1] and one opacity.

    Scales come from the mean distance to the 3 nearest neighbours (see :func:`knn_mean_distance`).
    """
    n = means.shape[0]
    require(n >= 1, "cannot build Gaussians from zero points")
    dist = knn_mean_distance(means).clamp_min(1e-7) * scale_factor
    quats = torch.zeros(n, 4, dtype=means.dtype, device=means.device)
    quats[:, 0] = 1.0
    params = {
        "means": means.clone(),
        "scales": torch.log(dist)[:, None].repeat(1, 3),
        "quats": quats,
        "opacities": torch.full((n,), float(np.log(opacity / (1 - opacity))), dtype=means.dtype, device=means.device),
        "sh0": rgb_to_sh0(colors)[:, None, :].clone(),
        "shN": torch.zeros(n, num_sh_bases(sh_degree) - 1, 3, dtype=means.dtype, device=means.device),
    }
    return Gaussians(params, sh_degree, active_sh_degree=0)


def random_ball_gaussians(config: GaussiansConfig, generator: torch.Generator, device: torch.device | str = "cpu") -> Gaussians:
    """``num_points`` Gaussians uniform in a ball of ``init_radius`` (the generator must be on the CPU)."""
    config.validate()
    n = config.num_points
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    radius = config.init_radius * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)
    means = direction * radius
    if config.init_color is None:
        colors = torch.rand(n, 3, generator=generator)
    else:
        colors = torch.tensor(config.init_color, dtype=torch.float32).expand(n, 3)
    g = gaussians_from_points(means, colors, config.init_opacity, config.sh_degree, config.init_scale_factor)
    return g.to(device)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from quaternions wxyz of any norm (normalised here): [...,4] -> [...,3,3] (kornia's formula)."""
    from kornia.geometry.conversions import quaternion_to_rotation_matrix

    return quaternion_to_rotation_matrix(torch.nn.functional.normalize(quats, dim=-1))


def make_optimizers(gaussians: Gaussians, lrs: LearningRates, eps: float = 1e-15) -> dict[str, torch.optim.Optimizer]:
    """One Adam per parameter key, each with its own learning rate (what gsplat.strategy expects)."""
    lrs.validate()
    fused = gaussians.device.type == "cuda"
    return {
        key: torch.optim.Adam(
            [{"params": [gaussians.params[key]], "lr": getattr(lrs, key), "name": key}],
            eps=eps,
            betas=(0.9, 0.999),
            fused=fused,
        )
        for key in PARAM_KEYS
    }
