"""The training configuration: one tree of typed dataclasses that the CLI is generated from.

Each part's options live next to the code that uses them (``CameraConfig`` in camera.py, ``NoiseConfig``
in noise.py, ...); this module composes them and owns the run-level options. Precedence, lowest first:
dataclass defaults < ``--method`` defaults < preset (``--config NAME|PATH``, or the model's own preset)
< command-line flags; on ``--resume`` the run's saved config takes the place of the preset.
Presets live in the checkout's top-level configs/*.yaml, ship inside the wheel as fsd_gs/configs, and are found by
name from any folder (:func:`presets_dir`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from fsd_gs.camera import CameraConfig
from fsd_gs.densify import DensifyConfig
from fsd_gs.errors import UserError, require
from fsd_gs.gaussians import GaussiansConfig, LearningRates
from fsd_gs.methods import MethodName, MethodOptions, method_spec
from fsd_gs.noise import NoiseConfig
from fsd_gs.perp_neg import PerpNegWeights
from fsd_gs.prior.compile import legacy_mode
from fsd_gs.prior.family import model_family
from fsd_gs.prior.loading import DEFAULT_MODEL, PriorConfig
from fsd_gs.render import RenderConfig
from fsd_gs.schedule import ScheduleConfig
from fsd_gs.view_prompts import ViewPromptConfig
from fsd_gs.viewer.config import ViewerConfig


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
    """Append ", front view" / ", side view" / ", back view" / ", overhead view" to the prompt per camera (the spans
    and the wording: --guidance.view-prompts.*)."""
    view_prompts: ViewPromptConfig = field(default_factory=ViewPromptConfig)
    """Which views count as front, back and overhead, and the words each view appends (the built-in shapes prior
    keeps the wording its captions were trained with unless a *-suffix option overrides it)."""
    perp_neg: bool = False
    """Perp-Neg (docs/methods.md): the positive prompt of a view interpolates the front/side/back prompts by azimuth
    and the other views' prompts become negatives, projected perpendicular to the positive direction. Costs 2 more
    prior rows per view (2 + 2 instead of 2). Needs view-dependent prompting; works with every method and prior."""
    perp_neg_weights: PerpNegWeights = field(default_factory=PerpNegWeights)
    """Perp-Neg's weights of the negative prompts, f(r) = a exp(-b r) + c of the view's interpolation ratio r."""
    allow_slow_cpu: bool = False
    """Run a large model (Stable Diffusion) on a CPU anyway, at seconds per step."""

    def validate(self) -> None:
        """Raise :class:`UserError` on the first bad guidance option."""
        self.view_prompts.validate()
        self.perp_neg_weights.validate()
        require(
            not (self.perp_neg and not self.view_dependent),
            "--guidance.perp-neg needs view-dependent prompts: drop --guidance.no-view-dependent",
        )


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
    """Show progress: a bar on a terminal, a plain line every 5% otherwise."""
    formats: tuple[str, ...] = ()
    """Also export the finished asset in these formats (splat, ply_compressed, glb, mesh; python -m fsd_gs.export)."""


@dataclass
class TrainConfig:
    """Text-to-3D Gaussian Splatting with Flow Score Distillation.

    python -m fsd_gs.train --model shapes --prompt "a red mushroom"       (the built-in CPU prior; offline)

    python -m fsd_gs.train --prompt "a DSLR photo of a corgi"             (Stable Diffusion 2.1 on a GPU)
    """

    prompt: str = ""
    """The text prompt, e.g. "a red mushroom"."""
    negative_prompt: str = ""
    """Negative prompt for classifier-free guidance (empty: the unconditional embedding)."""
    method: MethodName = "fsd"
    """fsd: world-map noise + sqrt-annealed t (docs/fsd.md); sds: fresh noise + random t; nfsd, csd, vsd: the
    paper's other baselines (docs/methods.md). Switches noise, schedule and the distillation direction together;
    explicit --noise.* / --schedule.* flags still win."""
    config: Optional[str] = None
    """A preset applied before the command-line flags: a shipped name (shapes-fsd, shapes-sds, fsd-sd21, sds-sd21,
    ...) or a YAML file. Default: the model's own preset (shapes-<method> for --model shapes, <method>-sd35 for a Stable
    Diffusion 3 model, <method>-sd21 otherwise)."""
    model: str = DEFAULT_MODEL
    """Diffusion prior: a hub id, a local diffusers folder, or "shapes" for the built-in CPU prior."""
    seed: int = 0
    """Random seed, 0 to 4294967295 (2^32 - 1; negative seeds are refused, so every seed names its run folder
    seed<N> once): same seed, same asset (bitwise on a CPU at any OMP_NUM_THREADS for the same --threads; on CUDA
    see --deterministic)."""
    threads: int = 1
    """CPU only: torch threads used by the training step. Results are bitwise reproducible for a given value; 1 lets
    several runs share a machine without slowing each other (0: torch's default)."""
    steps: int = 1200
    """Optimisation steps."""
    device: str = "auto"
    """auto (CUDA if available), cpu, cuda or cuda:N."""
    output_dir: Path = Path("outputs")
    """The run folder <output_dir>/<prompt-slug>/<date-time>-seed<N>/ is created inside it (never overwritten)."""
    resume: Optional[Path] = None
    """Continue the run in this run folder from its last checkpoint (its saved config is used; --steps may extend it)."""
    from_scratch: bool = False
    """With --resume: retrain from step 0 when none of the run's checkpoints can be read (this replaces its model.ply);
    without it such a resume is refused."""
    deterministic: bool = False
    """CUDA only: use torch's deterministic algorithms where it has them (slower). gsplat's backward still adds with
    atomics, so CUDA runs are close but not bitwise reproducible either way."""

    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    method_options: MethodOptions = field(default_factory=MethodOptions)
    prior: PriorConfig = field(default_factory=PriorConfig)
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
        check_finite(self)
        check_seed(self.seed)
        require(self.threads >= 0, f"--threads must be >= 0, got {self.threads}")
        require(self.steps > 0, f"--steps must be a positive number of steps, got {self.steps}")
        require(self.model.strip() != "", "--model is empty: pass a hub id, a local folder or 'shapes'")
        for part in (
            self.camera,
            self.gaussians,
            self.noise,
            self.schedule,
            self.optim.lr,
            self.densify,
            self.render,
            self.viewer,
            self.method_options,
            self.guidance,
        ):
            part.validate()
        require(self.output.log_every >= 1, "--output.log-every must be >= 1")
        if self.output.formats:
            from fsd_gs.export import validate_formats

            validate_formats(self.output.formats)
        require(self.output.turntable_views >= 1, "--output.turntable-views must be >= 1")
        require(0.0 < self.optim.progressive_until <= 1.0, "--optim.progressive-until must lie in (0, 1]")
        if self.optim.progressive_start is not None:
            require(self.optim.progressive_start > 0, "--optim.progressive-start must be a positive size in pixels")


class PresetWarning(UserWarning):
    """A run without the model's own preset (a method that ships none for this model)."""


# -- method defaults ------------------------------------------------------------------------------
def method_defaults(cfg: TrainConfig, method: str) -> TrainConfig:
    """``cfg`` with the noise and schedule of ``method`` (docs/fsd.md sec. 2, docs/methods.md: --method switches the
    noise, the schedule and the distillation direction and nothing else; the values live in fsd_gs.methods)."""
    spec = method_spec(method)
    return dataclasses.replace(
        cfg, method=method, noise=dataclasses.replace(spec.noise), schedule=dataclasses.replace(spec.schedule)
    )


def merge_into(obj: Any, updates: dict[str, Any], where: str = "") -> Any:
    """A copy of dataclass ``obj`` with nested ``updates`` applied; an unknown key or a wrong type is a UserError."""
    require(isinstance(updates, dict), f"preset section {where or '<top>'} must be a mapping of option names to values")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in updates.items():
        key = str(key).replace("-", "_")
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise UserError(f"unknown option {path!r} in the preset; see --help for the valid names")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            require(isinstance(value, dict), f"preset option {path!r} must be a section (a mapping), got {value!r}")
            changes[key] = merge_into(current, value, path)
        else:
            changes[key] = coerce(value, hints[key], path)
    return dataclasses.replace(obj, **changes)


def coerce(value: Any, annotation: Any, path: str) -> Any:
    """``value`` from YAML as the type ``annotation`` wants it (lists -> tuples, str -> Path); else a UserError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, path)
            except UserError:
                continue
        raise UserError(f"preset option {path!r} has the wrong type: {value!r}")
    if origin is Literal:
        if {"on", "off"} <= set(args):  # compile: false of old configs, and YAML's unquoted on/off, are booleans
            value = legacy_mode(value)
        require(value in args, f"preset option {path!r} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is tuple:
        require(isinstance(value, (list, tuple)), f"preset option {path!r} must be a list, got {value!r}")
        types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        require(len(types) == len(value), f"preset option {path!r} must have {len(types)} values, got {value!r}")
        return tuple(coerce(v, t, f"{path}[{i}]") for i, (v, t) in enumerate(zip(value, types)))
    if annotation is bool:
        require(isinstance(value, bool), f"preset option {path!r} must be true or false, got {value!r}")
        return value
    if annotation is int:
        require(
            isinstance(value, int) and not isinstance(value, bool),
            f"preset option {path!r} must be a whole number, got {value!r}",
        )
        return value
    if annotation is float:
        require(
            isinstance(value, (int, float)) and not isinstance(value, bool),
            f"preset option {path!r} must be a number, got {value!r}",
        )
        return float(value)
    if annotation is str:
        require(isinstance(value, str), f"preset option {path!r} must be a string, got {value!r}")
        return value
    if annotation is Path:
        require(isinstance(value, str), f"preset option {path!r} must be a path, got {value!r}")
        return Path(value)
    return value


MAX_SEED = 2**32 - 1
"""Seeds lie in 0..MAX_SEED: torch generators take 64-bit seeds and each random choice adds a small offset."""


def check_seed(seed: int, flag: str = "--seed") -> None:
    """UserError unless ``seed`` is an integer in 0..MAX_SEED (a huge one overflows torch's generator)."""
    require(isinstance(seed, int) and 0 <= seed <= MAX_SEED, f"{flag} must be a whole number from 0 to {MAX_SEED}, got {seed}")


def check_finite(cfg: Any, where: str = "") -> None:
    """UserError naming the first float option that is NaN or infinite (a flag like --optim.lr.means inf)."""
    for f in dataclasses.fields(cfg):
        value, path = getattr(cfg, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            check_finite(value, path)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            require(
                not (isinstance(v, float) and not math.isfinite(v)),
                f"--{path.replace('_', '-')} must be a finite number, got {value}",
            )


def presets_dir() -> Path:
    """The shipped presets' folder: ``fsd_gs/configs`` in an installed wheel (pyproject.toml maps the package
    ``fsd_gs.configs`` to the checkout's top-level ``configs/``), else that ``configs/`` beside the package folder
    (a checkout, on PYTHONPATH or installed editable)."""
    package = Path(__file__).resolve().parent
    installed, checkout = package / "configs", package.parent / "configs"
    return installed if any(installed.glob("*.yaml")) else checkout


def preset_names() -> list[str]:
    """Names of the shipped presets (file names without .yaml)."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def find_preset(name: str | Path) -> Path:
    """A preset's file: a shipped name ("shapes-fsd"), a shipped file name, or a path to a YAML file."""
    candidates = [Path(name), presets_dir() / str(name), presets_dir() / f"{name}.yaml", presets_dir() / Path(name).name]
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(f"preset {str(name)!r} not found: use a shipped name ({', '.join(preset_names())}) or a YAML file")


def load_preset(name: str | Path) -> dict[str, Any]:
    """Read a preset into a nested dict; a missing or malformed file is a UserError."""
    path = find_preset(name)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise UserError(f"cannot read the preset {path} ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"preset {path} is not a text file (byte {exc.start} is not UTF-8): pass a YAML file") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"preset {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    require(isinstance(data, dict), f"preset {path} must be a YAML mapping of option names to values")
    return data


def default_preset(model: str | None, method: str | None) -> str:
    """The preset a run gets when none is named: the model's own (shapes-<method>, or <method>-<family> with the family
    read from the model's model_index.json: sd35 for Stable Diffusion 3 pipelines, else sd21)."""
    method = method or "fsd"
    if model == "shapes":
        return f"shapes-{method}"
    if model == "shapes-mv":  # the multi-view shapes prior: shapes-<method>-mv
        return f"shapes-{method}-mv"
    if model == "shapes-flow":  # the rectified-flow shapes prior: shapes-<method>-flow
        return f"shapes-{method}-flow"
    return f"{method}-{model_family(model)}"


def base_config(method: str | None, preset: str | Path | None, model: str | None = None) -> TrainConfig:
    """Defaults + method defaults + preset: the starting point that command-line flags override.

    With no preset, the model's own preset is used when it exists (``--model shapes`` alone runs the shapes
    preset's resolution, steps and guidance).
    """
    if method is not None:
        method_spec(method)  # an unknown method is a UserError before any preset is looked for
    name = preset if preset is not None else default_preset(model, method)
    if preset is None and not (presets_dir() / f"{name}.yaml").is_file():
        warnings.warn(
            f"no preset {name} for --method {method or 'fsd'} with --model {model}: the run uses the method's "
            f"defaults and the options' defaults (add {name}.yaml, docs/extending.md)",
            PresetWarning,
            stacklevel=2,
        )
        name = None
    data = load_preset(name) if name is not None else {}
    method = str(method or data.get("method", "fsd"))
    cfg = method_defaults(TrainConfig(), method)
    cfg = merge_into(cfg, {k: v for k, v in data.items() if k != "method"})
    if model is not None:
        cfg = dataclasses.replace(cfg, model=model)
    return dataclasses.replace(cfg, config=str(preset) if preset is not None else None)


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
    """The inverse of :func:`to_dict` (used by --resume to read a run's config.yaml; its "resumed" log is skipped)."""
    return merge_into(TrainConfig(), {k: v for k, v in data.items() if k != RESUME_LOG})


RESUME_LOG = "resumed"
"""Key of config.yaml's list of resumes and the options each one changed."""
