"""Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm"): the other views as negative prompts.

View-dependent prompting alone asks for "a chair, back view" at the back, but the 2D prior's idea of a chair
is mostly its front, so the front creeps onto every side (the multi-face "Janus" problem). Perp-Neg keeps the
positive prompt of a view and pushes away from the prompts of the other views, but only along the part of
their guidance direction that the positive prompt does not share (its perpendicular component), so the push
cannot cancel what the positive prompt asks for. For a view at azimuth a (degrees, 0 = the object's front):

    front-side, |a| < 90:   r = 1 - |a|/90   pos = r E_front + (1 - r) E_side   negatives: front -f_fs(r),  side -f_sf(1 - r)
    side-back,  |a| >= 90:  r = 2 - |a|/90   pos = r E_side + (1 - r) E_back    negatives: side -f_sb(r),  front -f_fsb(r)
                            (back_from b > 90: r = min(1, (180 - |a|) / (180 - b)), the back mixed in only beyond b)
    overhead (elevation above the overhead limit): pos = E_overhead, both weights 0

    e_pos = eps(x_t; pos) - eps(x_t; u)      e_i = eps(x_t; neg_i) - eps(x_t; u)
    delta = e_pos + sum_i w_i perp(e_i, e_pos)         perp(x, y) = x - (<x, y> / <y, y>) y   (per view, over C, h, w)
    eps_hat = eps(x_t; u) + omega delta

E_v are the text embeddings of the view prompts ("<prompt>, front view", ...), u the unconditional embedding,
f(r) = a exp(-b r) + c the exponential-decay weights of the angle (:class:`PerpNegWeights`). ``delta`` replaces
the classifier direction eps(x_t; y) - eps(x_t; u) of plain CFG in every method (:func:`classifier_direction`);
with every w_i = 0 it is plain CFG exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from fsd_gs.camera import wrap_azimuth
from fsd_gs.errors import require
from fsd_gs.prior.base import NegativeViews, PromptEmbeddings
from fsd_gs.prior.conditioning import Conditioning

Decay = tuple[float, float, float]
"""(a, b, c) of f(r) = a exp(-b r) + c."""

NEGATIVES = 2
"""Negative prompts per view (N): the two view prompts other than the positive's nearest."""


@dataclass
class PerpNegWeights:
    """The exponential-decay weights f(r) = a exp(-b r) + c of Perp-Neg's negative prompts, as (a, b, c).

    r is the interpolation ratio of the view (front-side: 1 at the front, 0 at the side; side-back: 1 at the side,
    0 at the back). The defaults are the published ones (threestudio's perp_neg_f_*); a negative that is the view's
    own prompt gets ~0 (f_fs(1) = f_sf(1) = f_sb(1) = 0 to 3 decimals)."""

    front_side: Decay = (4.0, 0.5, -2.426)
    """f_fs: weight of the front prompt as a negative at front-side views, of r (0 at the front itself)."""
    side_front: Decay = (4.0, 0.5, -2.426)
    """f_sf: weight of the side prompt as a negative at front-side views, of 1 - r (0 at the side itself)."""
    side_back: Decay = (1.0, 0.5, -0.606)
    """f_sb: weight of the side prompt as a negative at side-back views, of r (0 at the side itself)."""
    front_side_back: Decay = (1.0, 0.5, 0.967)
    """f_fsb: weight of the front prompt as a negative at side-back views, of r (1.97 at the back, 1.57 at the side)."""
    back_from: float = 90.0
    """Azimuth (degrees from the front) from which the positive mixes in the back prompt: side-back views at |a| <=
    back_from are pure side (r = 1), beyond it r falls linearly to 0 at 180. 90 is the published interpolation
    (r = 2 - |a|/90); a larger value keeps more of the orbit "side"."""

    def validate(self) -> None:
        """Raise :class:`~fsd_gs.errors.UserError` on the first non-finite parameter."""
        for name in ("front_side", "side_front", "side_back", "front_side_back"):
            values = getattr(self, name)
            require(
                len(values) == 3 and all(math.isfinite(float(v)) for v in values),
                f"--guidance.perp-neg-weights.{name.replace('_', '-')} must be three finite numbers a b c, got {values}",
            )
        require(
            90.0 <= self.back_from < 180.0,
            f"--guidance.perp-neg-weights.back-from must lie in [90, 180) degrees, got {self.back_from}",
        )


def decay(params: Decay, r: torch.Tensor) -> torch.Tensor:
    """f(r) = a exp(-b r) + c elementwise, for r of any shape (float64 in, float64 out)."""
    a, b, c = (float(v) for v in params)
    return a * torch.exp(-b * r) + c


@dataclass
class PerpNegPlan:
    """What Perp-Neg does at each of B views: the positive's mix of view prompts and the signed negative weights.

    Attributes:
        positive: [B,V] mixing weights over the rows of :class:`PromptEmbeddings` ``cond`` (each row sums to 1).
        negatives: [B,N] long, the rows of ``cond`` used as negative prompts.
        weights: [B,N] float64, the signed weights w_i of delta (<= 0 with the default schedule: a push away).
    """

    positive: torch.Tensor
    negatives: torch.Tensor
    weights: torch.Tensor


def plan(
    azimuth: torch.Tensor, elevation: torch.Tensor, views: Sequence[str], weights: PerpNegWeights, overhead_above: float = 60.0
) -> PerpNegPlan:
    """The :class:`PerpNegPlan` of B views at ``azimuth`` and ``elevation`` [B] (degrees).

    ``views`` names the rows of the embeddings (:attr:`PromptEmbeddings.views`); it must hold front, side, back and
    overhead (view-dependent prompting).
    """
    require(
        all(v in views for v in ("front", "side", "back", "overhead")),
        "--guidance.perp-neg needs view-dependent prompts: leave --guidance.view-dependent on",
    )
    row = {v: views.index(v) for v in ("front", "side", "back", "overhead")}
    az = wrap_azimuth(azimuth.detach().to("cpu", torch.float64)).abs()
    el = elevation.detach().to("cpu", torch.float64)
    batch = az.shape[0]
    front_side = az < 90.0
    overhead = el > overhead_above
    r = torch.where(front_side, 1.0 - az / 90.0, side_back_ratio(az, weights.back_from))

    positive = torch.zeros(batch, len(views), dtype=torch.float64)
    idx = torch.arange(batch)
    first = torch.where(front_side, row["front"], row["side"])  # the row r weighs
    second = torch.where(front_side, row["side"], row["back"])  # the row 1 - r weighs
    positive[idx, first] += r
    positive[idx, second] += 1.0 - r
    positive[overhead] = 0.0
    positive[overhead, row["overhead"]] = 1.0

    negatives = torch.stack(
        [torch.where(front_side, row["front"], row["side"]), torch.where(front_side, row["side"], row["front"])], dim=1
    )
    w = torch.stack(
        [
            torch.where(front_side, -decay(weights.front_side, r), -decay(weights.side_back, r)),
            torch.where(front_side, -decay(weights.side_front, 1.0 - r), -decay(weights.front_side_back, r)),
        ],
        dim=1,
    )
    w[overhead] = 0.0
    return PerpNegPlan(positive=positive, negatives=negatives, weights=w)


def side_back_ratio(az: torch.Tensor, back_from: float = 90.0) -> torch.Tensor:
    """r of side-back views at |azimuth| ``az`` [B] in [90, 180] (float64): 1 up to ``back_from``, then linear to 0 at
    180; at 90 it is the published 2 - |a|/90, computed as such."""
    if back_from == 90.0:
        return 2.0 - az / 90.0
    return ((180.0 - az) / (180.0 - back_from)).clamp(max=1.0)


def select(
    embeddings: PromptEmbeddings,
    azimuth: torch.Tensor,
    elevation: torch.Tensor,
    weights: PerpNegWeights,
    overhead_above: float = 60.0,
) -> tuple[Conditioning, NegativeViews]:
    """Perp-Neg's (conditioning, negatives) for B views at ``azimuth``, ``elevation`` [B] (degrees).

    The conditioning's conditional row is the interpolated view embedding of each view (the positive; pooled
    embeddings, where the prior has them, are interpolated the same way); the negatives are the other views'
    embeddings [N,B,L,D] with their signed weights [B,N] (:func:`plan`).
    """
    p = plan(azimuth, elevation, embeddings.views, weights, overhead_above)
    rows = p.negatives.t().to(embeddings.cond.device, non_blocking=True)  # [N,B]; no host sync
    cond, negative = _mix(embeddings.cond, p.positive, rows)
    batch = cond.shape[0]
    pooled_cond = pooled_negative = pooled_uncond = None
    if embeddings.pooled_cond is not None and embeddings.pooled_uncond is not None:
        pooled_cond, pooled_negative = _mix(embeddings.pooled_cond, p.positive, rows)
        pooled_uncond = embeddings.pooled_uncond.expand(batch, -1)
    signed = p.weights.to(cond.device, non_blocking=True)  # [B,N]
    negatives = NegativeViews(embeddings=negative, weights=signed, pooled=pooled_negative)
    uncond = embeddings.uncond.expand(batch, -1, -1)
    return Conditioning(cond, uncond, pooled_cond, pooled_uncond), negatives


def _mix(table: torch.Tensor, positive: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positives [B,...], negatives [N,B,...]) of a table of view rows [V,...]: the [B,V] mix of the rows, and the
    rows [N,B] themselves."""
    mix = positive.to(table.dtype).to(table.device, non_blocking=True)
    pattern = "bv,vld->bld" if table.dim() == 3 else "bv,vp->bp"  # text [V,L,D] or pooled [V,P] rows
    return torch.einsum(pattern, mix, table), table[rows]  # weights 1 and 0 give a view prompt's row exactly


def perpendicular(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The component of x [B,...] perpendicular to y [B,...], per sample: x - (<x, y> / <y, y>) y (x where y = 0)."""
    dims = tuple(range(1, x.dim()))
    xy = (x * y).sum(dim=dims, keepdim=True)
    yy = (y * y).sum(dim=dims, keepdim=True)
    scale = torch.where(yy > 0, xy / torch.where(yy > 0, yy, torch.ones_like(yy)), torch.zeros_like(yy))
    return x - scale * y


def classifier_direction(
    eps_cond: torch.Tensor,
    eps_uncond: torch.Tensor,
    eps_negatives: Sequence[torch.Tensor] = (),
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The guidance direction [B,C,h,w] every method scales by omega: eps_cond - eps_uncond, or with Perp-Neg's
    negatives (N predictions [B,C,h,w] and signed weights [B,N]) e_pos + sum_i w_i perp(eps_neg_i - eps_uncond, e_pos).

    The one place where the classifier-free direction is formed (the priors' CFG, CSD and NFSD all call it).
    """
    delta = eps_cond - eps_uncond
    if weights is None:
        return delta
    if weights.shape != (delta.shape[0], len(eps_negatives)):
        raise ValueError(
            f"Perp-Neg got weights of shape {tuple(weights.shape)} for {len(eps_negatives)} negatives of {delta.shape[0]} views"
        )
    push = torch.zeros_like(delta)
    for i, eps_neg in enumerate(eps_negatives):
        w = weights[:, i].to(delta.device, delta.dtype).view(-1, *([1] * (delta.dim() - 1)))
        push = push + w * perpendicular(eps_neg - eps_uncond, delta)
    return delta + push
