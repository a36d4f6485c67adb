"""The run's options of the methods beyond FSD and SDS (``--method-options.*``): one section per method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from fsd_gs.methods.variational import VSDConfig


@dataclass
class MethodOptions:
    """Options of the methods beyond FSD and SDS."""

    nfsd_negative_prompt: Optional[str] = None
    """NFSD's negative prompt (its delta_D term); None: the prior's default (Stable Diffusion: NFSD's "unrealistic,
    blurry, low quality, ..."; the shapes prior: "", whose world has no words for bad images, so NFSD = CSD there)."""
    vsd: VSDConfig = field(default_factory=VSDConfig)

    def validate(self) -> None:
        """Raise :class:`UserError` on the first bad option."""
        self.vsd.validate()
