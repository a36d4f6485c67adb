"""What a prior is conditioned on for a batch of B views: one opaque object the loss, the methods and the samplers
pass along without looking inside.

    conditioning = embeddings.select(["front", "side"])          # PromptEmbeddings -> Conditioning of 2 views
    eps_hat = prior.predict(z_t, t, conditioning, guidance_scale)

Text-only priors (CLIP: Stable Diffusion 1/2, MVDream, the shapes priors) fill ``cond`` and ``uncond``; priors with a
pooled text embedding too (Stable Diffusion 3) also fill ``pooled_cond`` and ``pooled_uncond``. Only the priors read
the fields; everyone else uses the methods below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch


def _rows(x: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    """``x`` [1 or n, ...] broadcast to n rows (a view, no copy), or None."""
    return None if x is None else x.expand(n, *x.shape[1:])


@dataclass
class Conditioning:
    """The conditional and unconditional inputs of B views.

    Attributes:
        cond: conditional text embeddings [B,L,D].
        uncond: unconditional (negative-prompt) embeddings [B,L,D], or [1,L,D] shared by every view.
        pooled_cond: pooled conditional embeddings [B,P] (SD3), or None.
        pooled_uncond: pooled unconditional embeddings [B,P] or [1,P], or None.
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    pooled_cond: Optional[torch.Tensor] = None
    pooled_uncond: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        """B, the rows of ``cond``."""
        return int(self.cond.shape[0])

    def expand(self, n: int) -> Conditioning:
        """Every field broadcast to n rows (from 1 row or n rows; views, no copies)."""
        return Conditioning(
            self.cond.expand(n, -1, -1), self.uncond.expand(n, -1, -1), _rows(self.pooled_cond, n), _rows(self.pooled_uncond, n)
        )

    def repeat(self, k: int) -> Conditioning:
        """k copies of the B views, one after the other (kB rows)."""
        return Conditioning.cat([self] * k)

    def index(self, rows: torch.Tensor) -> Conditioning:
        """The views at ``rows`` [N] (long); a shared [1,...] unconditional row is broadcast."""
        full = self.expand(len(self))
        rows = rows.to(self.cond.device)
        pick = lambda x: None if x is None else x[rows]  # noqa: E731
        return Conditioning(full.cond[rows], full.uncond[rows], pick(full.pooled_cond), pick(full.pooled_uncond))

    def to(self, device: torch.device | str) -> Conditioning:
        """The same conditioning on ``device``."""
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        return Conditioning(self.cond.to(device), self.uncond.to(device), move(self.pooled_cond), move(self.pooled_uncond))

    def conditional(self) -> Conditioning:
        """The conditional inputs alone, as both fields (for an unguided prediction eps(x_t; y): the unconditional rows,
        which may be [1,...] or [B',...] of another batch, are not needed)."""
        return Conditioning(self.cond, self.cond, self.pooled_cond, self.pooled_cond)

    def unconditional(self) -> Conditioning:
        """The unconditional inputs as the conditional ones (for an unguided prediction eps(x_t; u))."""
        return Conditioning(self.uncond, self.uncond, self.pooled_uncond, self.pooled_uncond)

    def conditional_rows(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(cond [B,L,D], pooled_cond [B,P] or None): what a network call with this conditioning is fed."""
        return self.cond, self.pooled_cond

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """The views of ``parts`` in order (sum of their B); every part must have pooled fields or none."""
        full = [p.expand(len(p)) for p in parts]
        pooled = [p.pooled_cond is not None for p in full]
        if any(pooled) and not all(pooled):
            raise ValueError("Conditioning.cat got parts with and without pooled embeddings")
        cat = lambda xs: torch.cat(xs) if all(x is not None for x in xs) else None  # noqa: E731
        return Conditioning(
            torch.cat([p.cond for p in full]),
            torch.cat([p.uncond for p in full]),
            cat([p.pooled_cond for p in full]),
            cat([p.pooled_uncond for p in full]),
        )
