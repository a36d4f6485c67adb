"""FSD and SDS: the residual eps_hat(x_t; y) - eps; they differ only in their noise and timestep schedule."""

from __future__ import annotations

from fsd_gs.methods.base import Guidance, Image2DSettings, MethodSpec, predict
from fsd_gs.noise import NOISE_PRESETS
from fsd_gs.schedule import SCHEDULE_PRESETS


class ScoreGuidance(Guidance):
    """SDS and FSD: eps_hat(x_t; y) - eps (they differ only in eps and t, which the caller chooses)."""

    def __init__(self, name: str = "fsd") -> None:
        self.name = name

    def direction(self, prior, z, z_t, eps, t, conditioning, guidance_scale, cameras=None, negatives=None):
        return predict(prior, z_t, t, conditioning, guidance_scale, cameras, negatives).to(z.dtype) - eps


FSD = MethodSpec(
    "fsd",
    NOISE_PRESETS["fsd"],
    SCHEDULE_PRESETS["fsd"],
    Image2DSettings(500, 7.5, 3e-3, fresh_noise=False),
    "eps_hat(x_t; y) - eps, eps fixed per camera (world map), t annealed (sqrt)",
    make=lambda prior, embeddings, options, seed: ScoreGuidance("fsd"),
)
"""The paper's method: world-map noise + sqrt-annealed t (3D); one fixed noise + linear t (2D, Tab. 3)."""

SDS = MethodSpec(
    "sds",
    NOISE_PRESETS["sds"],
    SCHEDULE_PRESETS["sds"],
    Image2DSettings(500, 100.0, 2e-2, fresh_noise=True),
    "eps_hat(x_t; y) - eps, eps fresh, t ~ U[0.02, 0.98]",
    make=lambda prior, embeddings, options, seed: ScoreGuidance("sds"),
)
"""DreamFusion: fresh noise + t ~ U[0.02, 0.98] (threestudio's defaults); CFG 100 in 2D (Tab. 3)."""
