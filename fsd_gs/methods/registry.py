"""The method registry: every method by name, the names for tyro's choices, and :func:`make_guidance`.

    guidance = make_guidance("vsd", prior, prompt_embeddings, MethodOptions(), seed=cfg.seed)

Built-in methods (one module each): fsd, sds (score.py), nfsd (noise_free.py), csd (classifier.py),
vsd (variational.py). A third-party method is a :class:`~fsd_gs.methods.base.MethodSpec` named by an
entry point of the ``fsd_gs.methods`` group (docs/extending.md). 3D: fsd = world-map noise + sqrt t (the
paper); sds, nfsd, csd, vsd = fresh noise + t ~ U[0.02, 0.98] (threestudio's defaults). 2D: Tab. 3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from fsd_gs.methods.base import Guidance, MethodSpec
from fsd_gs.methods.classifier import CSD
from fsd_gs.methods.noise_free import NFSD
from fsd_gs.methods.options import MethodOptions
from fsd_gs.methods.score import FSD, SDS
from fsd_gs.methods.variational import VSD
from fsd_gs.prior.base import DiffusionPrior, PromptEmbeddings
from fsd_gs.registry import Registry

METHODS: Registry[MethodSpec] = Registry("method", "--method", entry_point_group="fsd_gs.methods")
"""Every method by name (a read-only mapping): the built-ins, then the ``fsd_gs.methods`` entry points."""
for _spec in (FSD, SDS, NFSD, CSD, VSD):
    METHODS.register(_spec)

if TYPE_CHECKING:
    MethodName = str
else:
    MethodName = METHODS.literal()
    """``Literal`` of the registered names: the choices of ``--method`` (config.py, image2d.py)."""


def method_names() -> tuple[str, ...]:
    """Every registered method name, built-ins first."""
    return METHODS.names()


def method_spec(name: str) -> MethodSpec:
    """The spec of ``name``; UserError for an unknown method."""
    return METHODS.get_entry(name)


def make_guidance(
    method: str, prior: DiffusionPrior, embeddings: PromptEmbeddings, options: Optional[MethodOptions] = None, seed: int = 0
) -> Guidance:
    """The :class:`Guidance` of ``method`` for one run (once, at start-up; it may embed prompts).

    Args:
        method: a key of :data:`METHODS`.
        prior: the diffusion prior.
        embeddings: the run's prompt embeddings (VSD conditions its LoRA on the view-independent row).
        options: NFSD's negative prompt and VSD's options (validated here).
        seed: the run's seed (VSD's generator and LoRA initialisation).
    """
    spec = method_spec(method)
    options = options or MethodOptions()
    options.validate()
    return spec.build(prior, embeddings, options, seed)
