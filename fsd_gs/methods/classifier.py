"""CSD (Yu et al.): the classifier direction omega (eps(x_t; y) - eps(x_t; u)) only, no noise term."""

from __future__ import annotations

from fsd_gs.methods.base import Guidance, Image2DSettings, MethodSpec, raw_predictions
from fsd_gs.noise import NOISE_PRESETS
from fsd_gs.perp_neg import classifier_direction
from fsd_gs.schedule import SCHEDULE_PRESETS


class ClassifierGuidance(Guidance):
    """CSD (Yu et al.): only the classifier direction omega (eps(x_t; y) - eps(x_t; u)); no noise term."""

    name = "csd"

    def direction(self, prior, z, z_t, eps, t, conditioning, guidance_scale, cameras=None, negatives=None):
        parts = [conditioning, conditioning.unconditional(), *([] if negatives is None else negatives.parts())]
        eps_cond, eps_uncond, *eps_negs = raw_predictions(prior, z_t, t, parts, cameras)
        weights = None if negatives is None else negatives.weights
        return (guidance_scale * classifier_direction(eps_cond, eps_uncond, eps_negs, weights)).to(z.dtype)


CSD = MethodSpec(
    "csd",
    NOISE_PRESETS["sds"],
    SCHEDULE_PRESETS["sds"],
    Image2DSettings(500, 7.5, 2e-2, fresh_noise=True),
    "omega (eps(x_t; y) - eps(x_t; u))",
    make=lambda prior, embeddings, options, seed: ClassifierGuidance(),
)
"""Fresh noise + t ~ U[0.02, 0.98] (threestudio's defaults); CSD is not in Tab. 3: 2D takes NFSD's column."""
