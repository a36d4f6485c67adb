"""NFSD (Katzir et al.): omega (eps(x_t; y) - eps(x_t; u)) + (eps(x_t; u) - eps(x_t; neg)), neg its negative prompt."""

from __future__ import annotations

from typing import Any, Optional

from fsd_gs.methods.base import Guidance, Image2DSettings, MethodSpec, raw_predictions
from fsd_gs.noise import NOISE_PRESETS
from fsd_gs.perp_neg import classifier_direction
from fsd_gs.prior.base import NFSD_NEGATIVE_PROMPT as NFSD_NEGATIVE_PROMPT  # re-exported: it lives with the priors now
from fsd_gs.prior.base import DiffusionPrior, PromptEmbeddings
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.schedule import SCHEDULE_PRESETS


def default_negative_prompt(prior: DiffusionPrior) -> str:
    """NFSD's negative prompt for ``prior``: its :attr:`~fsd_gs.prior.base.DiffusionPrior.default_negative_prompt`
    ("" for the shapes world's priors, :data:`NFSD_NEGATIVE_PROMPT` for open-vocabulary models)."""
    return prior.default_negative_prompt


class NoiseFreeGuidance(Guidance):
    """NFSD (Katzir et al.) as the FSD paper re-implements it (no special case for small t):
    omega (eps(x_t; y) - eps(x_t; u)) + (eps(x_t; u) - eps(x_t; neg)).

    ``negative``: the negative prompt's :class:`~fsd_gs.prior.conditioning.Conditioning` (one view); None means the
    empty prompt, i.e. neg = u, and the delta_D term vanishes (NFSD = CSD) without an extra prediction.
    """

    name = "nfsd"

    def __init__(self, negative: Optional[Conditioning]) -> None:
        self.negative = negative

    def direction(self, prior, z, z_t, eps, t, conditioning, guidance_scale, cameras=None, negatives=None):
        views = [] if negatives is None else negatives.parts()
        weights = None if negatives is None else negatives.weights
        pair = [conditioning, conditioning.unconditional()]
        if self.negative is None:
            eps_cond, eps_uncond, *eps_views = raw_predictions(prior, z_t, t, [*pair, *views], cameras)
            return (guidance_scale * classifier_direction(eps_cond, eps_uncond, eps_views, weights)).to(z.dtype)
        eps_cond, eps_uncond, eps_neg, *eps_views = raw_predictions(prior, z_t, t, [*pair, self.negative, *views], cameras)
        delta = classifier_direction(eps_cond, eps_uncond, eps_views, weights)
        return (guidance_scale * delta + (eps_uncond - eps_neg)).to(z.dtype)


def make_noise_free(prior: DiffusionPrior, embeddings: PromptEmbeddings, options: Any, seed: int) -> NoiseFreeGuidance:
    """NFSD's guidance: the negative prompt of ``options`` (None: :func:`default_negative_prompt`) embedded once."""
    negative = options.nfsd_negative_prompt
    negative = default_negative_prompt(prior) if negative is None else negative
    if not negative.strip():
        return NoiseFreeGuidance(None)
    return NoiseFreeGuidance(prior.encode_prompts(negative, "", view_dependent=False).select(["none"]))


NFSD = MethodSpec(
    "nfsd",
    NOISE_PRESETS["sds"],
    SCHEDULE_PRESETS["sds"],
    Image2DSettings(500, 7.5, 2e-2, fresh_noise=True),
    "omega (eps(x_t; y) - eps(x_t; u)) + (eps(x_t; u) - eps(x_t; neg))",
    make=make_noise_free,
)
"""Fresh noise + t ~ U[0.02, 0.98] (threestudio's defaults); Tab. 3's NFSD column in 2D."""
