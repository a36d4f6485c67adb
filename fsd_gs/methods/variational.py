"""VSD (ProlificDreamer), one particle: eps_hat(x_t; y) - eps_lora(x_t; y_none, c), a LoRA trained on the renders."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fsd_gs.errors import UserError, require
from fsd_gs.methods.base import Guidance, Image2DSettings, MethodSpec, predict
from fsd_gs.noise import NOISE_PRESETS
from fsd_gs.prior.base import DiffusionPrior, PromptEmbeddings
from fsd_gs.schedule import SCHEDULE_PRESETS

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel


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


class CameraEmbedding(nn.Module):
    """The LoRA denoiser's camera condition: flattened camera-to-world [B,16] -> [B,D] added to the timestep embedding.

    A two-layer MLP in float32 whose last layer starts at zero, so the LoRA denoiser starts as the prior.
    """

    def __init__(self, dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        last = nn.Linear(dim, dim)
        self.net = nn.Sequential(nn.Linear(16, dim), nn.SiLU(), last)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
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
        if prior.process.kind != "vp":
            raise UserError(
                "--method vsd trains a LoRA copy of a camera-conditioned UNet2DConditionModel with the diffusion "
                "denoising loss, which flow priors (Stable Diffusion 3's transformer) do not have; use fsd, sds, nfsd "
                "or csd with this model"
            )
        unet = getattr(prior, "unet", None)
        if not isinstance(unet, UNet2DConditionModel) or prior.camera_conditioned:
            raise UserError(
                "--method vsd needs a prior with a diffusers UNet2DConditionModel (Stable Diffusion or "
                "the shapes prior); use fsd, sds, nfsd or csd with this model"
            )
        self.config = config
        self.process = prior.process
        self.lora_cond = lora_cond.detach()
        device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self.unet = self._copy(unet)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed + config.seed_offset)
            self._add_lora()
            # drawn after the LoRA (whose initialisation is as before) from the same seeded generator, so that two
            # guidances of one seed are equal in one process too (it was drawn from torch's global generator)
            self.camera = CameraEmbedding(self.unet.time_embedding.linear_2.out_features, self.dtype).to(device)
        # emb = t_emb + camera_emb: diffusers adds class_embedding(class_labels) to the time embedding; its stub
        # types the attribute as the embedding classes it builds itself, but any module mapping labels to [B,D] works
        self.unet.class_embedding = self.camera  # pyright: ignore[reportAttributeAccessIssue]
        self.lora = {n: p for n, p in self.unet.named_parameters() if p.requires_grad and "lora_" in n}
        for p in self.lora.values():  # the adapter trains in float32 (or float64) whatever the UNet's precision
            if p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.float()
        self.optimizer = torch.optim.Adam(self.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(seed + config.seed_offset)

    @staticmethod
    def _copy(unet: UNet2DConditionModel) -> UNet2DConditionModel:
        copied = copy.deepcopy(unet)
        copied.__dict__.pop("_compiled_call_impl", None)  # a compiled prior's copy runs eagerly
        return copied.eval().requires_grad_(False)

    def _add_lora(self) -> None:
        try:
            from peft import LoraConfig
        except ImportError as exc:  # pragma: no cover - peft is a dependency
            raise UserError("--method vsd needs the peft package: pip install peft") from exc
        rank = self.config.rank
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=list(LORA_TARGETS)))

    # -- the LoRA denoiser ------------------------------------------------------------------------
    def lora_raw(self, z_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The LoRA denoiser's raw output (``process.prediction``) [B,C,h,w] at z_t [B,C,h,w], t [B], float32 or wider
        (differentiable in the LoRA and camera parameters)."""
        batch = z_t.shape[0]
        dtype = self.dtype
        emb = self.lora_cond.to(z_t.device, dtype).expand(batch, -1, -1)
        out = self.unet(z_t.to(dtype), self.process.model_timestep(t), encoder_hidden_states=emb, class_labels=labels).sample
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        channels = z_t.shape[1]
        if out.shape[1] == 2 * channels:  # learned variance: keep the mean part
            out = out[:, :channels]
        return out

    def lora_eps(self, z_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """eps_lora(z_t; y_none, camera) [B,C,h,w]: :meth:`lora_raw` through ``process.eps_from``."""
        return self.process.eps_from(self.lora_raw(z_t, t, labels), z_t, t)

    def direction(self, prior, z, z_t, eps, t, conditioning, guidance_scale, cameras=None, negatives=None):
        eps_hat = predict(prior, z_t, t, conditioning, guidance_scale, cameras, negatives)
        with torch.no_grad():
            eps_lora = self.lora_eps(z_t, t, camera_labels(cameras, z_t.shape[0], z_t.device))
        return (eps_hat - eps_lora).to(z.dtype)

    def update(self, prior, z, cameras=None):
        """``lora_steps`` Adam steps of the denoising loss ||raw_lora(x_t; y, c) - process.raw_target(z, n, t)||^2 on z,
        x_t = process.add_noise(z, n, t) (for epsilon models: ||eps_lora - n||^2)."""
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
            z_t = self.process.add_noise(z, noise, t)
            with torch.enable_grad():
                pred = self.lora_raw(z_t, t, labels * keep.to(z.device).view(-1, 1))
                loss = torch.nn.functional.mse_loss(pred, self.process.raw_target(z, noise, t))
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


def make_variational(prior: DiffusionPrior, embeddings: PromptEmbeddings, options: Any, seed: int) -> VariationalGuidance:
    """VSD's guidance, its LoRA conditioned on the view-independent ("none") prompt row (its UNet reads text only)."""
    return VariationalGuidance(prior, embeddings.select(["none"]).conditional_rows()[0], options.vsd, seed)


VSD = MethodSpec(
    "vsd",
    NOISE_PRESETS["sds"],
    SCHEDULE_PRESETS["sds"],
    Image2DSettings(500, 7.5, 2e-2, fresh_noise=True),
    "eps_hat(x_t; y) - eps_lora(x_t; y, c), the LoRA trained on the renders",
    make=make_variational,
    stateful=True,
)
"""Fresh noise + t ~ U[0.02, 0.98] (ProlificDreamer's later max-t annealing starts after 5000 steps, beyond our runs)."""
