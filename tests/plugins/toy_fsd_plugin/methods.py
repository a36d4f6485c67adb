"""``halfsds``: SDS with half its residual, 0.5 (eps_hat(x_t; y) - eps); fresh noise, t ~ U[0.02, 0.98]."""

from __future__ import annotations

import dataclasses

from fsd_gs.methods.base import Guidance, Image2DSettings, MethodSpec, predict
from fsd_gs.noise.config import NOISE_PRESETS
from fsd_gs.schedule import SCHEDULE_PRESETS


class HalfScoreGuidance(Guidance):
    """Half of SDS's residual (stateless)."""

    name = "halfsds"

    def direction(self, prior, z, z_t, eps, t, conditioning, guidance_scale, cameras=None, negatives=None):
        return 0.5 * (predict(prior, z_t, t, conditioning, guidance_scale, cameras, negatives).to(z.dtype) - eps)


HALF_SDS = MethodSpec(
    "halfsds",
    dataclasses.replace(NOISE_PRESETS["sds"]),
    SCHEDULE_PRESETS["sds"],
    Image2DSettings(steps=500, guidance_scale=7.5, lr=2e-2, fresh_noise=True),
    "0.5 (eps_hat(x_t; y) - eps), eps fresh",
    make=lambda prior, embeddings, options, seed: HalfScoreGuidance(),
)
