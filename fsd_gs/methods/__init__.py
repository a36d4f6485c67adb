"""The score-distillation methods, one registry: what each method distils with and its default noise and t.

Every method shares the loss of :mod:`fsd_gs.distill` (docs/methods.md)::

    target = stopgrad(z - w(t) * residual)        d loss / d z = w(t) * residual / B

and differs only in three things: the noise eps it diffuses with, the timestep schedule, and the
``residual`` (its "direction"), computed by a :class:`Guidance` built once per run::

    guidance = make_guidance("vsd", prior, prompt_embeddings, MethodOptions(), seed=cfg.seed)
    out = distill_loss(prior, images, eps, t, conditioning, omega, cameras=cams, guidance=guidance)

    fsd, sds  residual = eps_hat(x_t; y) - eps                       (omega-guided prediction minus the noise)
    csd       residual = omega (eps(x_t; y) - eps(x_t; u))           (the classifier direction only)
    nfsd      residual = omega (eps(x_t; y) - eps(x_t; u)) + (eps(x_t; u) - eps(x_t; neg))
    vsd       residual = eps_hat(x_t; y) - eps_lora(x_t; y_none, c)   (a camera-conditioned LoRA of the prior)

u is the run's unconditional embedding (its negative prompt, normally ""), neg NFSD's own negative prompt.
Only VSD has state (its LoRA, the LoRA's Adam and its random generator); :meth:`Guidance.update` trains it
on the current renders after each direction, and :meth:`Guidance.state_dict` makes a resumed run continue
exactly. The training step never needs to know which method it runs.

Modules: base (MethodSpec, Guidance, predictions), one per family (score: fsd and sds; classifier: csd;
noise_free: nfsd; variational: vsd), options (MethodOptions), registry (METHODS, make_guidance; plugins
through the ``fsd_gs.methods`` entry point group). Adding a method: docs/extending.md.
"""

from fsd_gs.methods.base import Guidance, Image2DSettings, MethodSpec, predict, raw_predictions
from fsd_gs.methods.classifier import ClassifierGuidance
from fsd_gs.methods.noise_free import NFSD_NEGATIVE_PROMPT, NoiseFreeGuidance, default_negative_prompt
from fsd_gs.methods.options import MethodOptions
from fsd_gs.methods.registry import METHODS, MethodName, make_guidance, method_names, method_spec
from fsd_gs.methods.score import ScoreGuidance
from fsd_gs.methods.variational import LORA_TARGETS, CameraEmbedding, VariationalGuidance, VSDConfig, camera_labels

__all__ = [
    "LORA_TARGETS",
    "METHODS",
    "NFSD_NEGATIVE_PROMPT",
    "CameraEmbedding",
    "ClassifierGuidance",
    "Guidance",
    "Image2DSettings",
    "MethodName",
    "MethodOptions",
    "MethodSpec",
    "NoiseFreeGuidance",
    "ScoreGuidance",
    "VSDConfig",
    "VariationalGuidance",
    "camera_labels",
    "default_negative_prompt",
    "make_guidance",
    "method_names",
    "method_spec",
    "predict",
    "raw_predictions",
]
