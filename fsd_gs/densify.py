"""Adaptive density control: clone, split and prune Gaussians, and reset their opacities.

The rules are those of 3D Gaussian Splatting as implemented by ``gsplat.strategy.DefaultStrategy``
(1.5.3), with the same running statistics, the same screen-space gradient normalisation and the same
``step_pre_backward`` / ``step_post_backward`` calling convention, but with its two traps fixed and a
cap added:

* gsplat resets opacities when ``step % reset_every == 0 & step > 0``, which Python parses as
  ``step % reset_every == (0 & step) > 0``, i.e. never. Here the reset fires at every positive multiple
  of ``reset_every`` before ``refine_stop_iter``.
* gsplat prunes oversized Gaussians (``prune_scale3d`` in the world, ``prune_scale2d`` on screen) only
  once ``step > reset_every``: in a 1-5k step text-to-3D run that is late or never. Here they are pruned
  at every refinement.
* ``max_gaussians`` caps the count: when more Gaussians qualify for growth than the cap leaves room for,
  those with the highest mean screen-space gradient are grown and the rest wait.

One refinement (at ``refine_start_iter <= step < refine_stop_iter``, every ``refine_every`` steps):

1. prune: opacity < ``prune_opa``; or largest world std > ``prune_scale3d * scene_scale``; or (while
   ``step < refine_scale2d_stop_iter``) largest screen radius / max(W, H) > ``prune_scale2d``.
2. among the survivors, with g = accumulated |d loss / d means2d| (NDC units) / times visible:
   clone where g > ``grow_grad2d`` and largest std <= ``grow_scale3d * scene_scale``; split where
   g > ``grow_grad2d`` and the std is larger, or (while ``step < refine_scale2d_stop_iter``) the screen
   radius / max(W, H) > ``grow_scale2d``. Each grown Gaussian adds one to N (a split replaces one by
   two), so at most ``max_gaussians - N_survivors`` are grown, highest g first.
3. a clone is an exact copy; a split replaces a Gaussian by two with scales / 1.6 and means drawn from
   the Gaussian itself (the draw uses the densifier's own seeded generator, saved in checkpoints).
   New Gaussians start with zero Adam moments; the statistics restart from zero.

Pruning comes before growth so that the cap's room is not spent on Gaussians that are about to be
removed (gsplat grows first; the difference is that a Gaussian that is both too large and has a high
gradient is removed rather than split).

    densifier = Densifier(DensifyConfig(), scene_scale=1.0, total_steps=1200, seed=0)
    state = densifier.initialize_state()
    for step in range(steps):
        out = render(gaussians, cameras, background)
        densifier.step_pre_backward(params, optimizers, state, step, out.info)
        loss.backward(); [opt.step() for opt in optimizers.values()]
        counts = densifier.step_post_backward(params, optimizers, state, step, out.info)

``params`` is the ``torch.nn.ParameterDict`` of :class:`fsd_gs.gaussians.Gaussians` (entries are replaced
by new Parameters, the optimizers are pointed at them); ``info`` is :class:`fsd_gs.render.RenderOutput`'s
info from either backend: "means2d" [B,N,2] (or [nnz,2] packed) with ``.grad`` (``.absgrad`` for absgrad)
after backward, "radii" [B,N,2] int (0 = not visible; [nnz,2] packed), "gaussian_ids" [nnz] when packed,
"width", "height", "n_cameras".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from fsd_gs.errors import UserError, require
from fsd_gs.gaussians import quat_to_rotmat

STAT_KEYS = ("grad2d", "count", "radii")
"""Per-Gaussian running statistics in the state (each [N] float32 or None)."""
COUNT_KEYS = ("n_cloned", "n_split", "n_pruned", "n_reset", "n_capped")


@dataclass
class DensifyConfig:
    """Growth, pruning and opacity reset of the Gaussians (3DGS adaptive density control)."""

    enabled: bool = True
    """Densify at all; False keeps the initial Gaussians (no growth, pruning or opacity reset)."""
    refine_start_iter: int = 100
    """First step at which Gaussians are grown and pruned."""
    refine_stop_iter: Optional[int] = None
    """Step at which growth, pruning and opacity resets stop for good; None: refine_stop_fraction of the run."""
    refine_stop_fraction: float = 0.7
    """Used when refine_stop_iter is None: stop refining after this fraction of the run's steps, so that the
    last Gaussians have time to settle."""
    refine_every: int = 100
    """Grow and prune every this many steps (statistics are averaged over that window)."""
    reset_every: int = 1000
    """Clamp every opacity to reset_opacity every this many steps (0: never). Lets floaters fade and be pruned."""
    reset_opacity: float = 0.01
    """Opacity ceiling applied at a reset; must exceed prune_opa."""
    grow_grad2d: float = 0.01
    """Grow Gaussians whose mean screen-space gradient (NDC units, per view) exceeds this. It scales with the
    loss: 0.0002 is 3DGS's value for a photometric loss, 0.01 DreamGaussian's for a score-distillation loss
    of the same form as ours (0.5 * sum of squares / batch over latents, CFG 100)."""
    grow_scale3d: float = 0.04
    """Gaussians whose largest std is at most this x scene_scale are cloned, larger ones split."""
    grow_scale2d: float = 0.05
    """While step < refine_scale2d_stop_iter, also split Gaussians whose screen radius / max(W, H) exceeds this."""
    prune_opa: float = 0.005
    """Prune Gaussians whose opacity is below this."""
    prune_scale3d: float = 0.25
    """Prune Gaussians whose largest std exceeds this x scene_scale (at every refinement)."""
    prune_scale2d: float = 0.15
    """While step < refine_scale2d_stop_iter, prune Gaussians whose screen radius / max(W, H) exceeds this."""
    refine_scale2d_stop_iter: int = 0
    """Use the screen-size rules (grow_scale2d, prune_scale2d) before this step; 0 turns them off (as in gsplat)."""
    max_gaussians: int = 500_000
    """Never grow beyond this many Gaussians (the highest-gradient candidates are grown first)."""
    absgrad: bool = False
    """Use the absolute screen-space gradient (AbsGS; needs --render.absgrad and a higher grow_grad2d)."""

    def validate(self) -> None:
        """Raise UserError on the first setting that cannot work."""
        require(self.refine_start_iter >= 0, f"--densify.refine-start-iter must be >= 0, got {self.refine_start_iter}")
        require(
            self.refine_stop_iter is None or self.refine_stop_iter >= 0,
            f"--densify.refine-stop-iter must be >= 0 or None, got {self.refine_stop_iter}",
        )
        require(
            0.0 < self.refine_stop_fraction <= 1.0,
            f"--densify.refine-stop-fraction must lie in (0, 1], got {self.refine_stop_fraction}",
        )
        require(self.refine_every >= 1, f"--densify.refine-every must be >= 1, got {self.refine_every}")
        require(self.reset_every >= 0, f"--densify.reset-every must be >= 0 (0: never), got {self.reset_every}")
        require(0.0 <= self.prune_opa < 1.0, f"--densify.prune-opa must lie in [0, 1), got {self.prune_opa}")
        require(
            self.prune_opa < self.reset_opacity < 1.0,
            f"--densify.reset-opacity must lie in (prune-opa={self.prune_opa}, 1), got {self.reset_opacity}; "
            "otherwise every reset Gaussian would be pruned",
        )
        for name in ("grow_grad2d", "grow_scale3d", "grow_scale2d", "prune_scale3d", "prune_scale2d"):
            require(getattr(self, name) > 0, f"--densify.{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        require(
            self.refine_scale2d_stop_iter >= 0,
            f"--densify.refine-scale2d-stop-iter must be >= 0, got {self.refine_scale2d_stop_iter}",
        )
        require(self.max_gaussians >= 1, f"--densify.max-gaussians must be >= 1, got {self.max_gaussians}")


# -- parameter surgery ----------------------------------------------------------------------------
def _find_optimizer_state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> Optional[int]:
    for index, group in enumerate(optimizer.param_groups):
        if any(p is param for p in group["params"]):
            return index
    return None


@torch.no_grad()
def replace_rows(
    params: dict[str, torch.nn.Parameter] | torch.nn.ParameterDict,
    optimizers: dict[str, torch.optim.Optimizer],
    keep: torch.Tensor,
    appended: dict[str, torch.Tensor],
) -> None:
    """Keep the rows ``keep`` of every parameter and append new rows, keeping the optimizers consistent.

    Args:
        params: parameter dict, every entry [N, ...]; entries are replaced by new Parameters in place.
        optimizers: one optimizer per parameter key (keys without one must not require grad).
        keep: int64 row indices [M] into the current N rows (in the order they are kept).
        appended: per key, new rows [A, ...] (same A for every key) placed after the kept ones.
    Per-Gaussian optimizer state (any tensor whose first dim is N, e.g. Adam's exp_avg / exp_avg_sq) is
    gathered the same way and zero for appended rows; other state (Adam's scalar ``step``) is kept.
    """
    n_appended = {int(v.shape[0]) for v in appended.values()}
    if len(n_appended) > 1:
        raise ValueError(f"appended rows differ in count across keys: {n_appended}")
    for key in list(params.keys()):
        old = params[key]
        n_old = old.shape[0]
        extra = appended.get(key, old.new_zeros((0, *old.shape[1:])))
        new = torch.nn.Parameter(torch.cat([old.detach()[keep], extra.to(old.dtype)]), requires_grad=old.requires_grad)
        params[key] = new
        optimizer = optimizers.get(key)
        if optimizer is None:
            if old.requires_grad:
                raise ValueError(f"parameter {key!r} requires grad but has no optimizer")
            continue
        group_index = _find_optimizer_state(optimizer, old)
        if group_index is None:
            raise ValueError(f"the optimizer of {key!r} does not hold its parameter")
        group = optimizer.param_groups[group_index]
        group["params"] = [new if p is old else p for p in group["params"]]
        state = optimizer.state.pop(old, None)
        if state is None:
            continue
        for name, value in state.items():
            if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == n_old:
                pad = value.new_zeros((extra.shape[0], *value.shape[1:]))
                state[name] = torch.cat([value[keep], pad])
        optimizer.state[new] = state


@torch.no_grad()
def reset_opacities(
    params: dict[str, torch.nn.Parameter] | torch.nn.ParameterDict,
    optimizers: dict[str, torch.optim.Optimizer],
    value: float,
) -> None:
    """Clamp every opacity to at most ``value`` (in (0,1)) and zero the opacities' Adam moments, in place."""
    logit = math.log(value / (1.0 - value))
    opacities = params["opacities"]
    opacities.clamp_(max=logit)
    optimizer = optimizers.get("opacities")
    if optimizer is not None:
        for state_value in optimizer.state.get(opacities, {}).values():
            if torch.is_tensor(state_value) and state_value.dim() >= 1:
                state_value.zero_()


def split_children(params: dict[str, torch.Tensor], index: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Two children per Gaussian in ``index`` [S]: rows [2S, ...] for every key.

    Means are the parent's mean plus R diag(std) z, z ~ N(0, I) drawn from ``generator`` (on the CPU, so
    the result is the same on every device); log-scales are the parent's minus log(1.6); the rest is copied.
    """
    means = params["means"].detach()[index]
    stds = torch.exp(params["scales"].detach()[index])
    rot = quat_to_rotmat(params["quats"].detach()[index])
    z = torch.randn(2, len(index), 3, generator=generator).to(means.device, means.dtype)
    offsets = torch.einsum("nij,bnj->bni", rot, stds[None] * z)  # [2,S,3]
    children = {}
    for key, value in params.items():
        value = value.detach()
        if key == "means":
            children[key] = (means[None] + offsets).reshape(-1, 3)
        elif key == "scales":
            children[key] = torch.log(stds / 1.6).repeat(2, 1)
        else:
            children[key] = value[index].repeat(2, *([1] * (value.dim() - 1)))
    return children


# -- statistics and refinement masks -------------------------------------------------------------
def screen_gradients(means2d: torch.Tensor, absgrad: bool) -> Optional[torch.Tensor]:
    """The renderer's screen-space gradients (pixels): ``means2d.absgrad`` with ``absgrad``, else ``means2d.grad``.

    Shapes as info["means2d"]: [B,N,2] dense or [nnz,2] packed; None when the loss did not reach the Gaussians.
    """
    if absgrad:
        grads = getattr(means2d, "absgrad", None)
        if grads is None:
            raise UserError("--densify.absgrad needs the renderer's absolute gradients: also pass --render.absgrad")
        return grads
    return means2d.grad


def accumulate_stats(state: dict[str, Any], norms: torch.Tensor, info: dict[str, Any], packed: bool, tracks_radii: bool) -> None:
    """Add one step's gradient norms to the state's running statistics (all [N] float32, in place).

    Args:
        norms: |d loss / d means2d| in NDC units per view, [B,N] dense or [nnz] packed.
        info: the render's info: "radii" [B,N,2] ([nnz,2] packed; 0 = not visible), "width", "height" and,
            packed, "gaussian_ids" [nnz].
    grad2d sums the norms and count the views that saw each Gaussian; with ``tracks_radii`` radii keeps the
    largest screen radius / max(W, H).
    """
    width, height = float(info["width"]), float(info["height"])
    radii = info["radii"]
    device = state["grad2d"].device
    if packed:
        ids = info.get("gaussian_ids")
        if ids is None:
            raise ValueError("packed densification needs info['gaussian_ids'] from the renderer")
        ids = ids.to(device)
        state["grad2d"].index_add_(0, ids, norms.to(device, torch.float32))
        state["count"].index_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))
        if tracks_radii:
            screen = radii.amax(dim=-1).to(torch.float32) / max(width, height)
            state["radii"].scatter_reduce_(0, ids, screen.to(device), reduce="amax")
    else:
        visible = (radii > 0).all(dim=-1)  # [B,N]
        state["grad2d"] += (norms * visible).sum(dim=0).to(device, torch.float32)
        state["count"] += visible.sum(dim=0).to(device, torch.float32)
        if tracks_radii:
            screen = (radii.amax(dim=-1).to(torch.float32) * visible).amax(dim=0) / max(width, height)
            torch.maximum(state["radii"], screen.to(device), out=state["radii"])


def refine_masks(
    params: Any, state: dict[str, Any], config: DensifyConfig, scene_scale: float, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which of the N Gaussians a refinement prunes, clones and splits (before the cap; see the module doc).

    Returns prune, clone, split ([N] bool; clone and split exclude the pruned) and grads [N], the mean
    screen-space gradient over the views that saw each Gaussian.
    """
    c = config
    n = params["means"].shape[0]
    max_std = torch.exp(params["scales"].detach()).amax(dim=-1)
    # .get, not state["radii"] is not None: pyright would narrow state["radii"] to None where use_scale2d is False
    use_scale2d = step < c.refine_scale2d_stop_iter and state.get("radii") is not None

    prune = torch.sigmoid(params["opacities"].detach().reshape(n)) < c.prune_opa
    prune |= max_std > c.prune_scale3d * scene_scale
    if use_scale2d:
        prune |= state["radii"] > c.prune_scale2d

    grads = state["grad2d"] / state["count"].clamp_min(1.0)
    high = grads > c.grow_grad2d
    small = max_std <= c.grow_scale3d * scene_scale
    clone = high & small & ~prune
    split = high & ~small
    if use_scale2d:
        split |= state["radii"] > c.grow_scale2d
    split &= ~prune
    return prune, clone, split, grads


def cap_growth(clone: torch.Tensor, split: torch.Tensor, grads: torch.Tensor, room: int) -> int:
    """Keep at most ``room`` growth candidates, highest ``grads`` first; returns how many were held back.

    Args: clone, split [N] bool (cleared in place where held back), grads [N].
    """
    candidates = clone | split
    n_candidates = int(candidates.sum())
    n_capped = max(0, n_candidates - room)
    if n_capped > 0:
        chosen = torch.zeros_like(candidates)
        if room > 0:
            score = grads.masked_fill(~candidates, -math.inf)
            chosen[torch.topk(score, room, sorted=False).indices] = True
        clone &= chosen
        split &= chosen
    return n_capped


# -- the densifier --------------------------------------------------------------------------------
class Densifier:
    """Adaptive density control with gsplat's interface (see the module doc).

    Args:
        config: the rules and thresholds.
        scene_scale: world size that grow_scale3d / prune_scale3d are relative to (1.0 for an object
            of radius ~0.5-1 seen from ~2.5 units).
        total_steps: the run's length, used to resolve refine_stop_iter = None; when it is unknown too,
            refinement never stops.
        seed: seeds the generator that places split children.
    """

    def __init__(self, config: DensifyConfig, scene_scale: float = 1.0, total_steps: Optional[int] = None, seed: int = 0) -> None:
        config.validate()
        require(scene_scale > 0, f"scene_scale must be positive, got {scene_scale}")
        self.config = config
        self.scene_scale = float(scene_scale)
        self.seed = seed
        self._scales: dict[tuple, torch.Tensor] = {}
        if config.refine_stop_iter is not None:
            self.stop_iter: float = config.refine_stop_iter
        elif total_steps is not None:
            self.stop_iter = int(round(config.refine_stop_fraction * total_steps))
        else:
            self.stop_iter = math.inf

    # -- schedule ---------------------------------------------------------------------------------
    def is_active(self, step: int) -> bool:
        """Whether statistics are gathered at ``step`` (densification on, before refine_stop_iter)."""
        return self.config.enabled and step < self.stop_iter

    def is_refine_step(self, step: int) -> bool:
        """Whether ``step`` grows and prunes."""
        c = self.config
        return self.is_active(step) and step > 0 and step >= c.refine_start_iter and step % c.refine_every == 0

    def is_reset_step(self, step: int) -> bool:
        """Whether ``step`` resets the opacities (every positive multiple of reset_every, while active)."""
        c = self.config
        return self.is_active(step) and c.reset_every > 0 and step > 0 and step % c.reset_every == 0

    @property
    def tracks_radii(self) -> bool:
        return self.config.refine_scale2d_stop_iter > 0

    # -- state ------------------------------------------------------------------------------------
    def initialize_state(self) -> dict[str, Any]:
        """Fresh running state: statistics (allocated on the first step, on the gradients' device) and the generator."""
        state: dict[str, Any] = {key: None for key in STAT_KEYS}
        state["generator"] = torch.Generator().manual_seed(self.seed)
        return state

    def state_to_tensors(self, state: dict[str, Any]) -> dict[str, Optional[torch.Tensor]]:
        """The state as tensors (or None) for a safetensors checkpoint: grad2d, count, radii, rng."""
        out: dict[str, Optional[torch.Tensor]] = {key: state.get(key) for key in STAT_KEYS}
        out["rng"] = state["generator"].get_state()
        return out

    def state_from_tensors(self, tensors: dict[str, Optional[torch.Tensor]]) -> dict[str, Any]:
        """Inverse of :meth:`state_to_tensors` (missing keys get their initial values)."""
        state = self.initialize_state()
        for key in STAT_KEYS:
            value = tensors.get(key)
            if value is not None:
                if value.dim() != 1:
                    raise UserError(
                        f"densification state {key!r} has shape {tuple(value.shape)}, expected [N]; the checkpoint is damaged"
                    )
                state[key] = value.float()
        rng = tensors.get("rng")
        if rng is not None:
            state["generator"].set_state(rng.cpu().to(torch.uint8))
        return state

    def _reset_stats(self, state: dict[str, Any], n: int, device: torch.device) -> None:
        state["grad2d"] = torch.zeros(n, device=device)
        state["count"] = torch.zeros(n, device=device)
        state["radii"] = torch.zeros(n, device=device) if self.tracks_radii else None

    # -- callbacks --------------------------------------------------------------------------------
    def step_pre_backward(
        self, params: Any, optimizers: dict[str, torch.optim.Optimizer], state: dict[str, Any], step: int, info: dict[str, Any]
    ) -> None:
        """Before ``loss.backward()``: make sure info["means2d"] keeps its gradient."""
        if not self.is_active(step):
            return
        if "means2d" not in info:
            raise ValueError("densification needs info['means2d'] from the renderer")
        means2d = info["means2d"]
        if means2d.requires_grad and not means2d.is_leaf and not means2d.retains_grad:
            means2d.retain_grad()

    @torch.no_grad()
    def step_post_backward(
        self,
        params: Any,
        optimizers: dict[str, torch.optim.Optimizer],
        state: dict[str, Any],
        step: int,
        info: dict[str, Any],
        packed: bool = False,
    ) -> dict[str, int]:
        """After backward (and the optimizer step): gather statistics, refine, reset; returns the counts.

        Returns:
            {"n_cloned", "n_split", "n_pruned", "n_reset", "n_capped"}: Gaussians cloned, split (parents),
            pruned, 1 if the opacities were reset at this step, growth candidates held back by the cap.
        """
        counts: dict[str, int] = dict.fromkeys(COUNT_KEYS, 0)
        if not self.is_active(step):
            return counts
        self._update_state(params, state, info, packed)
        if self.is_refine_step(step):
            counts.update(self._refine(params, optimizers, state, step))
        if self.is_reset_step(step):
            reset_opacities(params, optimizers, self.config.reset_opacity)
            counts["n_reset"] = 1
        return counts

    def _scale(self, sx: float, sy: float, like: torch.Tensor) -> torch.Tensor:
        """The tensor [sx, sy] on ``like``'s device and dtype, made once per value: a new one every step would be a
        host-to-GPU copy that waits for the GPU's queue (a sync per step and asset)."""
        key = (sx, sy, like.device, like.dtype)
        if key not in self._scales:
            self._scales[key] = like.new_tensor([sx, sy])
        return self._scales[key]

    def _update_state(self, params: Any, state: dict[str, Any], info: dict[str, Any], packed: bool) -> None:
        """Accumulate the per-view screen-space gradient norm, the visibility count and the max screen radius."""
        for key in ("means2d", "radii", "width", "height", "n_cameras"):
            if key not in info:
                raise ValueError(f"densification needs info[{key!r}] from the renderer")
        grads = screen_gradients(info["means2d"], self.config.absgrad)
        n = params["means"].shape[0]
        grad2d: Optional[torch.Tensor] = state["grad2d"]  # a local: narrowing state["grad2d"] would outlive _reset_stats
        if grad2d is None or grad2d.shape[0] != n:
            self._reset_stats(state, n, params["means"].device)
        if grads is None:  # the loss did not reach the Gaussians this step
            return
        width, height, n_cams = float(info["width"]), float(info["height"]), float(info["n_cameras"])
        scale = self._scale(width / 2.0 * n_cams, height / 2.0 * n_cams, grads)  # pixels -> NDC, undo the batch mean
        norms = (grads * scale).norm(dim=-1)
        accumulate_stats(state, norms, info, packed, self.tracks_radii)

    def _refine(
        self, params: Any, optimizers: dict[str, torch.optim.Optimizer], state: dict[str, Any], step: int
    ) -> dict[str, int]:
        """Prune, then clone and split (highest gradient first, up to max_gaussians); restart the statistics."""
        n = params["means"].shape[0]
        device = params["means"].device
        prune, clone, split, grads = refine_masks(params, state, self.config, self.scene_scale, step)
        n_survivors = n - int(prune.sum())
        n_capped = cap_growth(clone, split, grads, room=max(0, self.config.max_gaussians - n_survivors))

        clone_idx = torch.nonzero(clone).flatten()
        split_idx = torch.nonzero(split).flatten()
        if len(clone_idx) or len(split_idx) or n_survivors < n:
            keep = torch.nonzero(~prune & ~split).flatten()
            children = split_children(params, split_idx, state["generator"])
            appended = {key: torch.cat([value.detach()[clone_idx], children[key]]) for key, value in params.items()}
            replace_rows(params, optimizers, keep, appended)
        self._reset_stats(state, params["means"].shape[0], state["grad2d"].device if state["grad2d"] is not None else device)
        return {"n_cloned": len(clone_idx), "n_split": len(split_idx), "n_pruned": n - n_survivors, "n_capped": n_capped}
