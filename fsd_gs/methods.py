"""The score-distillation methods, one registry: what each method distils with and its default noise and t.

Every method shares the loss of :mod:`fsd_gs.distill` (docs/methods.md)::

    target = stopgrad(z - w(t) * residual)        d loss / d z = w(t) * residual / B

and differs only in three things: the noise eps it diffuses with, the timestep schedule, and the
``residual`` (its "direction"), computed by a :class:`Guidance` built once per run::

    guidance = make_guidance("vsd", prior, prompt_embeddings, MethodOptions(), seed=cfg.seed)
    out = distill_loss(prior, images, eps, t, cond, uncond, omega, cameras=cams, guidance=guidance)

    fsd, sds  residual = eps_hat(x_t; y) - eps                       (omega-guided prediction minus the noise)
    csd       residual = omega (eps(x_t; y) - eps(x_t; u))           (the classifier direction only)
    nfsd      residual = omega (eps(x_t; y) - eps(x_t; u)) + (eps(x_t; u) - eps(x_t; neg))
    vsd       residual = eps_hat(x_t; y) - eps_lora(x_t; y_none, c)   (a camera-conditioned LoRA of the prior)

u is the run's unconditional embedding (its negative prompt, normally ""), neg NFSD's own negative prompt.
Only VSD has state (its LoRA, the LoRA's Adam and its random generator); :meth:`Guidance.update` trains it
on the current renders after each direction, and :meth:`Guidance.state_dict` makes a resumed run continue
exactly. The training step never needs to know which method it runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence

import torch
from torch import nn

from fsd_gs.errors import UserError, require
from fsd_gs.noise import NOISE_PRESETS, NoiseConfig
from fsd_gs.perp_neg import classifier_direction, negative_rows
from fsd_gs.prior.base import DiffusionPrior, NegativeViews, PromptEmbeddings
from fsd_gs.schedule import SCHEDULE_PRESETS, ScheduleConfig

MethodName = Literal["fsd", "sds", "nfsd", "csd", "vsd"]
METHOD_NAMES: tuple[str, ...] = ("fsd", "sds", "nfsd", "csd", "vsd")

NFSD_NEGATIVE_PROMPT = "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, gloomy"
"""NFSD's negative prompt for Stable Diffusion (Katzir et al., "Noise-Free Score Distillation", sec. 4)."""


# -- the registry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Image2DSettings:
    """One column of the paper's Tab. 3 (App. 0.D.2): the 2D experiment of a method (Adam, linear t)."""

    steps: int
    guidance_scale: float
    lr: Optional[float]
    fresh_noise: bool
    """True: fresh N(0, I) noise every step (SDS and its variants); False: the seed's one fixed noise (FSD)."""


@dataclass(frozen=True)
class MethodSpec:
    """What one method is: its 3D defaults (noise, schedule), its 2D settings and its direction."""

    name: str
    noise: NoiseConfig
    """Default noise of a 3D run (copy with dataclasses.replace before changing it)."""
    schedule: ScheduleConfig
    """Default timestep schedule of a 3D run."""
    image2d: Image2DSettings
    direction: str
    """The residual multiplied by w(t) in the target, as a formula."""
    stateful: bool = False
    """True when the guidance trains something during the run (VSD's LoRA): its state goes into checkpoints."""


_RANDOM_T = SCHEDULE_PRESETS["sds"]

METHODS: dict[str, MethodSpec] = {
    "fsd": MethodSpec("fsd", NOISE_PRESETS["fsd"], SCHEDULE_PRESETS["fsd"],
                      Image2DSettings(500, 7.5, 3e-3, fresh_noise=False),
                      "eps_hat(x_t; y) - eps, eps fixed per camera (world map), t annealed (sqrt)"),
    "sds": MethodSpec("sds", NOISE_PRESETS["sds"], _RANDOM_T,
                      Image2DSettings(500, 100.0, 2e-2, fresh_noise=True),
                      "eps_hat(x_t; y) - eps, eps fresh, t ~ U[0.02, 0.98]"),
    "nfsd": MethodSpec("nfsd", NOISE_PRESETS["sds"], _RANDOM_T,
                       Image2DSettings(500, 7.5, 2e-2, fresh_noise=True),
                       "omega (eps(x_t; y) - eps(x_t; u)) + (eps(x_t; u) - eps(x_t; neg))"),
    "csd": MethodSpec("csd", NOISE_PRESETS["sds"], _RANDOM_T,
                      Image2DSettings(500, 7.5, 2e-2, fresh_noise=True),
                      "omega (eps(x_t; y) - eps(x_t; u))"),
    "vsd": MethodSpec("vsd", NOISE_PRESETS["sds"], _RANDOM_T,
                      Image2DSettings(500, 7.5, 2e-2, fresh_noise=True),
                      "eps_hat(x_t; y) - eps_lora(x_t; y, c), the LoRA trained on the renders", stateful=True),
}
"""Every method by name. 3D: fsd = world-map noise + sqrt t (the paper); sds, nfsd, csd, vsd = fresh noise + t ~
U[0.02, 0.98] (threestudio's defaults for DreamFusion, NFSD, CSD and ProlificDreamer, whose later max-t annealing
starts after 5000 steps, beyond our runs). 2D: Tab. 3 (CSD is not in it: NFSD's column)."""


def method_spec(name: str) -> MethodSpec:
    """The spec of ``name``; UserError for an unknown method."""
    require(name in METHODS, f"--method must be one of {', '.join(METHOD_NAMES)}, got {name!r}")
    return METHODS[name]


# -- options --------------------------------------------------------------------------------------
@dataclass
class VSDConfig:
    """ProlificDreamer's variational score distillation, single particle (docs/methods.md)."""

    rank: int = 4
    """LoRA rank of the attention projections (to_q, to_k, to_v, to_out) of the copied denoiser."""
    lr: float = 1e-4
    """Adam learning rate of the LoRA and the camera embedding (threestudio's prolificdreamer: 1e-4)."""
    camera_dropout: float = 0.1
    """Share of LoRA training samples whose camera is zeroed (the "no camera" condition used without cameras)."""
    lora_steps: int = 1
    """LoRA updates per distillation step (each with its own t and noise)."""
    seed_offset: int = 7027
    """The LoRA's timesteps, noise and camera dropout come from a generator seeded with seed + seed_offset."""

    def validate(self) -> None:
        """Raise :class:`UserError` on the first bad option."""
        require(self.rank >= 1, f"--vsd.rank must be >= 1, got {self.rank}")
        require(self.lr > 0, f"--vsd.lr must be positive, got {self.lr}")
        require(0.0 <= self.camera_dropout <= 1.0, f"--vsd.camera-dropout must lie in [0, 1], got {self.camera_dropout}")
        require(self.lora_steps >= 1, f"--vsd.lora-steps must be >= 1, got {self.lora_steps}")


@dataclass
class MethodOptions:
    """Options of the methods beyond FSD and SDS."""

    nfsd_negative_prompt: Optional[str] = None
    """NFSD's negative prompt (its delta_D term); None: the prior's default (Stable Diffusion: NFSD's "unrealistic,
    blurry, low quality, ..."; the shapes prior: "", whose world has no words for bad images, so NFSD = CSD there)."""
    vsd: VSDConfig = field(default_factory=VSDConfig)

    def validate(self) -> None:
        self.vsd.validate()


def default_negative_prompt(prior: DiffusionPrior) -> str:
    """NFSD's negative prompt for ``prior``: "" for the shapes prior (no such words), NFSD's own otherwise."""
    from fsd_gs.prior.shapes import ShapesPrior

    return "" if isinstance(prior, ShapesPrior) else NFSD_NEGATIVE_PROMPT


# -- noise predictions ----------------------------------------------------------------------------
def predict(prior: DiffusionPrior, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
            guidance_scale: float, cameras: Any = None, negatives: Optional[NegativeViews] = None) -> torch.Tensor:
    """``prior.predict_noise`` [B,C,h,w], with ``cameras`` for camera-conditioned priors only and Perp-Neg's
    ``negatives`` when given."""
    extra: dict[str, Any] = {} if negatives is None else {"negatives": negatives}
    if prior.camera_conditioned:
        return prior.predict_noise(z_t, t, cond, uncond, guidance_scale, cameras=cameras, **extra)
    return prior.predict_noise(z_t, t, cond, uncond, guidance_scale, **extra)


def raw_predictions(prior: DiffusionPrior, z_t: torch.Tensor, t: torch.Tensor, embeddings: Sequence[torch.Tensor],
                    cameras: Any = None) -> list[torch.Tensor]:
    """Unguided eps(z_t; e) [B,C,h,w] for each embedding e ([B,L,D] or [1,L,D]), in ONE conditional-only call."""
    batch, k = z_t.shape[0], len(embeddings)
    emb = torch.cat([e.to(z_t.device).expand(batch, -1, -1) for e in embeddings])
    if cameras is not None and prior.camera_conditioned:
        from fsd_gs.camera import Cameras

        cameras = Cameras.cat([cameras] * k)
    eps = predict(prior, z_t.repeat(k, 1, 1, 1), t.repeat(k), emb, emb, 1.0, cameras)
    return list(eps.chunk(k))


# -- the guidances --------------------------------------------------------------------------------
class Guidance:
    """The direction a method distils with; stateless unless :attr:`stateful`.

    Attributes:
        name: the method's name.
        stateful: True when :meth:`update` trains parameters (these go into :meth:`state_dict`).
    """

    name: str = ""
    stateful: bool = False

    def direction(self, prior: DiffusionPrior, z: torch.Tensor, z_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
                  cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float, cameras: Any = None,
                  negatives: Optional[NegativeViews] = None) -> torch.Tensor:
        """The residual [B,C,h,w] multiplied by w(t) in the target (called without gradient).

        Args:
            prior: the diffusion prior.
            z: the clean model-space images [B,C,h,w], detached.
            z_t: alpha_t z + sigma_t eps [B,C,h,w].
            eps: the noise [B,C,h,w].
            t: integer timesteps [B].
            cond, uncond: text embeddings [B,L,D] (uncond may be [1,L,D]).
            guidance_scale: omega.
            cameras: the views' cameras (camera-conditioned priors and VSD), or None (2D).
            negatives: Perp-Neg's negative prompts (fsd_gs/perp_neg.py), predicted in the same prior call; they
                change the classifier direction eps(x_t; y) - eps(x_t; u) of every method. None: plain CFG.
        """
        raise NotImplementedError

    def update(self, prior: DiffusionPrior, z: torch.Tensor, cameras: Any = None) -> dict[str, torch.Tensor]:
        """Train on the current clean images z [B,C,h,w] (detached); returns detached scalars to log. No-op here."""
        return {}

    def parameters(self) -> list[torch.Tensor]:
        """The trained parameters (empty for stateless methods)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`update` changes (tensors on the CPU and plain values); {} when stateless."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; a stateless guidance accepts only {}."""
        if state:
            raise ValueError(f"the {self.name} guidance has no state, got keys {sorted(state)}")


class ScoreGuidance(Guidance):
    """SDS and FSD: eps_hat(x_t; y) - eps (they differ only in eps and t, which the caller chooses)."""

    def __init__(self, name: str = "fsd") -> None:
        self.name = name

    def direction(self, prior, z, z_t, eps, t, cond, uncond, guidance_scale, cameras=None, negatives=None):
        return predict(prior, z_t, t, cond, uncond, guidance_scale, cameras, negatives).to(z.dtype) - eps


class ClassifierGuidance(Guidance):
    """CSD (Yu et al.): only the classifier direction omega (eps(x_t; y) - eps(x_t; u)); no noise term."""

    name = "csd"

    def direction(self, prior, z, z_t, eps, t, cond, uncond, guidance_scale, cameras=None, negatives=None):
        eps_cond, eps_uncond, *eps_negs = raw_predictions(prior, z_t, t, [cond, uncond, *negative_rows(negatives)], cameras)
        weights = None if negatives is None else negatives.weights
        return (guidance_scale * classifier_direction(eps_cond, eps_uncond, eps_negs, weights)).to(z.dtype)


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
        eps_cond, eps_uncond, eps_neg, *eps_views = raw_predictions(prior, z_t, t, [cond, uncond, self.negative, *views],
                                                                    cameras)
        delta = classifier_direction(eps_cond, eps_uncond, eps_views, weights)
        return (guidance_scale * delta + (eps_uncond - eps_neg)).to(z.dtype)


class CameraEmbedding(nn.Module):
    """The LoRA denoiser's camera condition: flattened camera-to-world [B,16] -> [B,D] added to the timestep embedding.

    A two-layer MLP in float32 whose last layer starts at zero, so the LoRA denoiser starts as the prior.
    """

    def __init__(self, dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)
        self.out_dtype = dtype

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.net(labels.float()).to(self.out_dtype)


def camera_labels(cameras: Any, batch: int, device: torch.device) -> torch.Tensor:
    """Flattened camera-to-world matrices [B,16] float32 of ``cameras``; zeros (no camera) when None."""
    if cameras is None:
        return torch.zeros(batch, 16, device=device)
    c2w = torch.linalg.inv(cameras.viewmats.float())
    require(c2w.shape[0] == batch, f"VSD got {c2w.shape[0]} cameras for {batch} views")
    return c2w.reshape(batch, 16).to(device)


LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
"""Attention projections that get LoRA layers (ProlificDreamer's choice: LoRA on the attention)."""


class VariationalGuidance(Guidance):
    """VSD, one particle (ProlificDreamer): eps_hat(x_t; y) - eps_lora(x_t; y_none, c).

    eps_lora is a copy of the prior's UNet with LoRA layers on its attention projections and a camera
    embedding added to its timestep embedding; both start as the identity (LoRA's B = 0, the camera MLP's
    last layer = 0), so at the first step eps_lora equals the prior's conditional prediction. :meth:`update`
    trains it with the ordinary denoising loss on the current renders (fresh t ~ U{0..T-1} and noise from
    its own generator, the camera zeroed for ``camera_dropout`` of the samples), with its own Adam.

    Args:
        prior: a diffusers prior with a ``UNet2DConditionModel`` (Stable Diffusion, the shapes prior).
        lora_cond: the view-independent prompt embedding [1,L,D] the LoRA is conditioned on.
        config: rank, learning rate, camera dropout.
        seed: the run's seed (the generator uses seed + config.seed_offset).
    """

    name = "vsd"
    stateful = True

    def __init__(self, prior: DiffusionPrior, lora_cond: torch.Tensor, config: VSDConfig, seed: int = 0) -> None:
        from diffusers import UNet2DConditionModel

        config.validate()
        unet = getattr(prior, "unet", None)
        if not isinstance(unet, UNet2DConditionModel) or prior.camera_conditioned:
            raise UserError("--method vsd needs a prior with a diffusers UNet2DConditionModel (Stable Diffusion or "
                            "the shapes prior); use fsd, sds, nfsd or csd with this model")
        self.config = config
        self.prediction_type = str(getattr(prior, "prediction_type", "epsilon"))
        self.lora_cond = lora_cond.detach()
        device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self.alphas_cumprod = prior.alphas_cumprod.to(device).float()
        self.unet = self._copy(unet)
        self.camera = CameraEmbedding(self.unet.time_embedding.linear_2.out_features, self.dtype).to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed + config.seed_offset)
            self._add_lora()
        self.unet.class_embedding = self.camera  # emb = t_emb + camera_emb (diffusers adds class embeddings)
        self.lora = {n: p for n, p in self.unet.named_parameters() if p.requires_grad and "lora_" in n}
        for p in self.lora.values():  # the adapter trains in float32 (or float64) whatever the UNet's precision
            if p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.float()
        self.optimizer = torch.optim.Adam(self.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(seed + config.seed_offset)

    @staticmethod
    def _copy(unet: nn.Module) -> nn.Module:
        copied = copy.deepcopy(unet)
        copied.__dict__.pop("_compiled_call_impl", None)  # a compiled prior's copy runs eagerly
        return copied.eval().requires_grad_(False)

    def _add_lora(self) -> None:
        try:
            from peft import LoraConfig
        except ImportError as exc:  # pragma: no cover - peft is a dependency
            raise UserError("--method vsd needs the peft package: pip install peft") from exc
        rank = self.config.rank
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True,
                                         target_modules=list(LORA_TARGETS)))

    # -- the LoRA denoiser ------------------------------------------------------------------------
    def lora_eps(self, z_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """eps_lora(z_t; y_none, camera) [B,C,h,w], float32 or wider (differentiable in the LoRA and camera parameters)."""
        batch = z_t.shape[0]
        dtype = self.dtype
        emb = self.lora_cond.to(z_t.device, dtype).expand(batch, -1, -1)
        out = self.unet(z_t.to(dtype), t, encoder_hidden_states=emb, class_labels=labels).sample
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        channels = z_t.shape[1]
        if out.shape[1] == 2 * channels:  # learned variance: keep the mean part
            out = out[:, :channels]
        if self.prediction_type == "v_prediction":
            abar = self.alphas_cumprod.to(z_t.device)[t.long()].view(-1, 1, 1, 1)
            out = abar.sqrt() * out + (1 - abar).sqrt() * z_t.to(out.dtype)
        return out

    def direction(self, prior, z, z_t, eps, t, cond, uncond, guidance_scale, cameras=None, negatives=None):
        eps_hat = predict(prior, z_t, t, cond, uncond, guidance_scale, cameras, negatives)
        with torch.no_grad():
            eps_lora = self.lora_eps(z_t, t, camera_labels(cameras, z_t.shape[0], z_t.device))
        return (eps_hat - eps_lora).to(z.dtype)

    def update(self, prior, z, cameras=None):
        """``lora_steps`` Adam steps of the denoising loss ||eps_lora(alpha z + sigma n; y, c) - n||^2 on z."""
        z = z.detach()
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        batch = z.shape[0]
        labels = camera_labels(cameras, batch, z.device)
        losses = []
        for _ in range(self.config.lora_steps):
            t = torch.randint(0, prior.num_train_timesteps, (batch,), generator=self.generator)
            noise = torch.randn(z.shape, generator=self.generator).to(z.device, z.dtype)
            keep = (torch.rand(batch, generator=self.generator) >= self.config.camera_dropout).float()
            t = t.to(z.device)
            abar = self.alphas_cumprod.to(z.device)[t].view(-1, 1, 1, 1)
            z_t = abar.sqrt() * z + (1 - abar).sqrt() * noise
            with torch.enable_grad():
                pred = self.lora_eps(z_t, t, labels * keep.to(z.device).view(-1, 1))
                loss = torch.nn.functional.mse_loss(pred, noise)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        return {"loss_lora": torch.stack(losses).mean()}

    # -- state ------------------------------------------------------------------------------------
    def parameters(self) -> list[torch.Tensor]:
        return [*self.lora.values(), *self.camera.parameters()]

    def state_dict(self) -> dict[str, Any]:
        return {
            "lora": {n: p.detach().cpu().clone() for n, p in self.lora.items()},
            "camera": {n: p.detach().cpu().clone() for n, p in self.camera.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.lora) ^ set(state["lora"])
        missing |= {n for n, p in self.lora.items() if n in state["lora"] and state["lora"][n].shape != p.shape}
        if missing:
            raise ValueError(f"the VSD state does not match this LoRA (rank or prior changed?): {sorted(missing)[:3]}")
        with torch.no_grad():
            for n, p in self.lora.items():
                p.copy_(state["lora"][n])
        self.camera.load_state_dict(state["camera"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["rng"])


# -- building one -------------------------------------------------------------------------------
def make_guidance(method: str, prior: DiffusionPrior, embeddings: PromptEmbeddings,
                  options: Optional[MethodOptions] = None, seed: int = 0) -> Guidance:
    """The :class:`Guidance` of ``method`` for one run (once, at start-up; it may embed prompts).

    Args:
        method: a key of :data:`METHODS`.
        prior: the diffusion prior.
        embeddings: the run's prompt embeddings (VSD conditions its LoRA on the view-independent row).
        options: NFSD's negative prompt and VSD's options.
        seed: the run's seed (VSD's generator and LoRA initialisation).
    """
    method_spec(method)
    options = options or MethodOptions()
    options.validate()
    if method in ("fsd", "sds"):
        return ScoreGuidance(method)
    if method == "csd":
        return ClassifierGuidance()
    if method == "nfsd":
        negative = options.nfsd_negative_prompt
        negative = default_negative_prompt(prior) if negative is None else negative
        if not negative.strip():
            return NoiseFreeGuidance(None)
        return NoiseFreeGuidance(prior.encode_prompts(negative, "", view_dependent=False).cond[:1])
    row = embeddings.views.index("none") if "none" in embeddings.views else 0
    return VariationalGuidance(prior, embeddings.cond[row:row + 1], options.vsd, seed)
