"""NFSD (Katzir et al.): omega (eps(x_t; y) - eps(x_t; u)) + (eps(x_t; u) - eps(x_t; neg)), neg its negative prompt."""

from __future__ import annotations

from typing import Any, Optional

import torch

from fsd_gs.methods.base import Guidance, Image2DSettings, MethodSpec, raw_predictions
from fsd_gs.noise import NOISE_PRESETS
from fsd_gs.perp_neg import classifier_direction, negative_rows
from fsd_gs.prior.base import DiffusionPrior, PromptEmbeddings
from fsd_gs.schedule import SCHEDULE_PRESETS

NFSD_NEGATIVE_PROMPT = "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, gloomy"
"""NFSD's negative prompt for Stable Diffusion (Katzir et al., "Noise-Free Score Distillation", sec. 4)."""


def default_negative_prompt(prior: DiffusionPrior) -> str:
    """NFSD's negative prompt for ``prior``: "" for the shapes prior (no such words), NFSD's own otherwise."""
    from fsd_gs.prior.shapes import ShapesPrior

    return "" if isinstance(prior, ShapesPrior) else NFSD_NEGATIVE_PROMPT


class NoiseFreeGuidance(Guidance):
    """NFSD (Katzir et al.) as the FSD paper re-implements it (no special case for small t):
    omega (eps(x_t; y) - eps(x_t; u)) + (eps(x_t; u) - eps(x_t; neg)).

    ``negative``: the negative prompt's embedding [1,L,D]; None means the empty prompt, i.e. neg = u, and
    the delta_D term vanishes (NFSD = CSD) without an extra prediction.
    """

    name = "nfsd"

    def __init__(self, negative: Optional[torch.Tensor]) -> None:
        self.negative = negative

    def direction(self, prior, z, z_t, eps, t, cond, uncond, guidance_scale, cameras=None, negatives=None):
        views = negative_rows(negatives)
        weights = None if negatives is None else negatives.weights
        if self.negative is None:
            eps_cond, eps_uncond, *eps_views = raw_predictions(prior, z_t, t, [cond, uncond, *views], cameras)
            return (guidance_scale * classifier_direction(eps_cond, eps_uncond, eps_views, weights)).to(z.dtype)
        eps_cond, eps_uncond, eps_neg, *eps_views = raw_predictions(prior, z_t, t, [cond, uncond, self.negative, *views], cameras)
        delta = classifier_direction(eps_cond, eps_uncond, eps_views, weights)
        return (guidance_scale * delta + (eps_uncond - eps_neg)).to(z.dtype)


def make_noise_free(prior: DiffusionPrior, embeddings: PromptEmbeddings, options: Any, seed: int) -> NoiseFreeGuidance:
    """NFSD's guidance: the negative prompt of ``options`` (None: :func:`default_negative_prompt`) embedded once."""
    negative = options.nfsd_negative_prompt
    negative = default_negative_prompt(prior) if negative is None else negative
    if not negative.strip():
        return NoiseFreeGuidance(None)
    return NoiseFreeGuidance(prior.encode_prompts(negative, "", view_dependent=False).cond[:1])


NFSD = MethodSpec(
    "nfsd",
    NOISE_PRESETS["sds"],
    SCHEDULE_PRESETS["sds"],
    Image2DSettings(500, 7.5, 2e-2, fresh_noise=True),
    "omega (eps(x_t; y) - eps(x_t; u)) + (eps(x_t; u) - eps(x_t; neg))",
    make=make_noise_free,
)
"""Fresh noise + t ~ U[0.02, 0.98] (threestudio's defaults); Tab. 3's NFSD column in 2D."""
