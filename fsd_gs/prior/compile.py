"""torch.compile and CUDA graphs for the prior's fixed-shape networks: the mode, the ``auto`` decision, caches.

    decision = resolve_compile("auto", device, model, steps=1200)   # CompileDecision(mode="graphs", reason="...")
    setup_compile_cache()                                           # persistent inductor caches (when compiling)
    compile_module(prior.unet, decision.mode)                       # in place, fixed shapes

Modes (``--prior.compile``): ``off`` eager; ``on`` torch.compile's default mode (Triton kernels, fused ops);
``cudagraphs`` the same plus CUDA graphs (mode="reduce-overhead": each call replays one recorded graph
instead of launching hundreds of kernels; the UNet and VAE shapes never change during a run, so one
recording serves every step); ``graphs`` CUDA graphs of the eager guided UNet call without torch.compile
(fsd_gs/prior/graphs.py: a recording instead of a compile, no fused kernels); ``auto`` picks one of them in
:func:`resolve_compile`, the only place that decides, by the rule of :func:`auto_mode`. Old configs'
``compile: true/false`` read as on/off (:func:`legacy_mode`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, MutableMapping, Optional

import torch

from fsd_gs.errors import UserError

CompileMode = Literal["auto", "off", "on", "cudagraphs", "graphs"]
COMPILE_MODES: tuple[str, ...] = ("auto", "off", "on", "cudagraphs", "graphs")
RunMode = Literal["off", "on", "cudagraphs", "graphs"]
"""A resolved mode (``auto`` decided)."""
CUDA_ONLY_MODES = ("cudagraphs", "graphs")

GRAPHS_NOTE = "the first step of each batch size records CUDA graphs (nothing compiled)"
"""What the first steps cost under ``graphs`` (printed with the decision)."""

SHAPES_GRAPHS_REASON = "auto: the built-in prior's small UNet launches more than it computes, so its call is recorded"
"""Why ``auto`` records the built-in ``shapes`` and ``shapes-flow`` priors' UNet call on CUDA: on one H200 (2026-12-06,
BENCHMARKS.md round 3, ninth session) the 8-seed grouped shapes-fsd step took 20.9 ms with it against 44.9 eager (the
guided UNet 3.8 against 16.1); shapes-fsd-flow's, on one H100 (tenth session), 10.5 ms against 26.5."""

CACHE_ENV = "FSD_GS_COMPILE_CACHE"
"""Environment variable naming the compile cache folder (default ~/.cache/fsd_gs/compile)."""


@dataclass(frozen=True)
class CompileDecision:
    """What the prior's networks run as, and why (logged in the run's report.json and printed)."""

    mode: RunMode
    reason: str
    expect: str = ""
    """How long the first steps take to compile (set by :func:`resolve_compile` when compiling; printed with it)."""

    @property
    def enabled(self) -> bool:
        """Anything beyond eager PyTorch (compile or CUDA graphs)."""
        return self.mode != "off"

    @property
    def compiles(self) -> bool:
        """torch.compile runs (on, cudagraphs): the compile cache is used."""
        return self.mode in ("on", "cudagraphs")

    def __str__(self) -> str:
        return f"{self.mode} ({self.reason}{'; ' + self.expect if self.expect else ''})"


NOT_COMPILED = CompileDecision("off", "not compiled")


def legacy_mode(value: Any) -> Any:
    """``compile: true/false`` of old config.yaml files (and YAML's unquoted on/off) as "on"/"off"; else ``value``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def resolve_compile(
    requested: str | bool, device: torch.device, model: str = "", steps: Optional[int] = None, long_lived: bool = False
) -> CompileDecision:
    """The compile mode a prior is loaded with: the one place where ``auto`` is decided.

    Args:
        requested: auto, off, on, cudagraphs or graphs (true/false of old configs are on/off).
        device: where the prior runs; ``auto`` compiles only on CUDA (compiling on a CPU costs minutes and
            saves little), and ``cudagraphs`` and ``graphs`` need CUDA.
        model: the --model string; the built-in "shapes", "shapes-mv" and "shapes-flow" priors are never torch.compiled
            (tiny models): ``graphs`` when asked for, and for "shapes" and "shapes-flow" under ``auto`` on CUDA (their UNet
            call recorded), else off.
        steps: the run's steps, for ``auto``'s expected times (:func:`auto_mode`); None: unknown (eager).
        long_lived: the prior serves many assets (a batch worker): ``auto`` counts
            :attr:`AutoCosts.long_lived_steps` steps.
    Raises UserError for an unknown mode, or CUDA graphs (cudagraphs, graphs) on a CPU.
    """
    decision = _decide(requested, torch.device(device), model, steps, long_lived)
    if decision.enabled:
        return CompileDecision(decision.mode, decision.reason, first_steps_note() if decision.compiles else GRAPHS_NOTE)
    return decision


def _decide(requested: str | bool, device: torch.device, model: str, steps: Optional[int], long_lived: bool) -> CompileDecision:
    requested = legacy_mode(requested)
    if requested not in COMPILE_MODES:
        raise UserError(f"--prior.compile must be one of {', '.join(COMPILE_MODES)}, got {requested!r}")
    if requested in CUDA_ONLY_MODES and device.type != "cuda":
        raise UserError(f"--prior.compile {requested} needs a CUDA device (this run is on {device}): use on or off")
    if model in ("shapes", "shapes-mv", "shapes-flow"):  # fsd_gs.prior.detectors.is_shapes_world (detectors imports us)
        # a recording, not a compile: what a tiny, launch-bound network gains from; auto takes it for "shapes" and for
        # "shapes-flow" (the same UNet under a VP-to-flow wrapper whose table is copied to the GPU before any capture),
        # both recorded and checked against eager on a GPU; shapes-mv has not been recorded on one
        if requested == "graphs" or (requested == "auto" and device.type == "cuda" and model in ("shapes", "shapes-flow")):
            return CompileDecision("graphs", "asked for" if requested == "graphs" else SHAPES_GRAPHS_REASON)
        return CompileDecision("off", f"the built-in {model} prior is never torch.compiled (--prior.compile graphs records it)")
    if requested != "auto":
        return CompileDecision(requested, "asked for" if requested != "off" else "off")  # type: ignore[arg-type]
    if device.type != "cuda":
        return CompileDecision("off", f"auto: no compile on {device.type}")
    return CompileDecision(*auto_mode(steps, long_lived, compile_cache_warm()))


# -- the rule of auto -----------------------------------------------------------------------------
@dataclass(frozen=True)
class AutoCosts:
    """What each mode costs, for :func:`auto_mode`: means of ``scripts/bench_step.py --grid startup --repeat 2`` and
    ``--grid grouped`` on one H100 (2026-12-05, random-weight SD-2.1-base fp16, 512 px, 1 view, 100k Gaussians, issue
    27; BENCHMARKS.md). Step times in ms; first-step times in s (load excluded)."""

    eager_step_ms: float = 59.2
    graphs_step_ms: float = 43.1
    cudagraphs_step_ms: float = 30.5
    eager_first_s: float = 1.1
    graphs_first_s: float = 1.5
    cold_compile_first_s: float = 72.8
    warm_compile_first_s: float = 10.4
    long_lived_steps: int = 12_000
    """The steps a batch worker's prior serves (ten default assets)."""

    def seconds(self, mode: RunMode, steps: int, cache_warm: bool) -> float:
        """Expected seconds of a run of ``steps`` steps in ``mode`` (off, graphs or cudagraphs)."""
        compiled_first = self.warm_compile_first_s if cache_warm else self.cold_compile_first_s
        first, step = {
            "off": (self.eager_first_s, self.eager_step_ms),
            "graphs": (self.graphs_first_s, self.graphs_step_ms),
            "cudagraphs": (compiled_first, self.cudagraphs_step_ms),
        }[mode]
        return first + max(0, steps - 1) * step / 1e3


AUTO_COSTS = AutoCosts()
FIRST_STEP_COLD_S = round(AUTO_COSTS.cold_compile_first_s)
"""Seconds the first compiled step takes with cold caches, as printed (the measured cost auto decides with)."""
FIRST_STEP_WARM_S = round(AUTO_COSTS.warm_compile_first_s)
"""Seconds the first compiled step takes with the warm compile cache of an earlier run on the machine, as printed."""


def auto_mode(steps: Optional[int], long_lived: bool, cache_warm: bool, costs: AutoCosts = AUTO_COSTS) -> tuple[RunMode, str]:
    """(mode, reason) that ``auto`` picks for a prior on CUDA: of off, graphs and cudagraphs, the one of least expected
    time for the run (:meth:`AutoCosts.seconds`), with the compile cache's warmth.

    On the measured costs (H100, 2026-12-05; docs/design.md, "Compiling the prior"), a fresh machine's 1200-step run
    takes ``graphs`` (~53 s of steps against ~109 s for a cold ``cudagraphs``, 1.13x the ~47 s of a warm one), a warm
    cache or a batch worker ``cudagraphs``, a run of a few dozen steps ``off``. A machine whose runs are all one-offs
    stays on ``graphs`` until something compiles (a batch, or ``--prior.compile cudagraphs`` once).

    Args:
        steps: the run's steps (None: unknown, eager unless ``long_lived``).
        long_lived: a batch worker, whose prior serves :attr:`AutoCosts.long_lived_steps` steps.
        cache_warm: the compile cache has entries (:func:`compile_cache_warm`).
    """
    horizon = costs.long_lived_steps if long_lived else steps
    if horizon is None:
        return "off", "auto: steps unknown"
    modes: tuple[RunMode, ...] = ("off", "graphs", "cudagraphs")
    best = min(modes, key=lambda m: costs.seconds(m, horizon, cache_warm))
    expected = f"~{costs.seconds(best, horizon, cache_warm):.0f} s for {horizon} steps"
    worker = "a batch worker, " if long_lived else ""
    return best, f"auto: the fastest, {worker}{expected}, compile cache {'warm' if cache_warm else 'cold'}"


def first_steps_note(environ: Optional[MutableMapping[str, str]] = None) -> str:
    """What the first compiled steps cost here: the warm figure when the compile cache folder has files already."""
    if compile_cache_warm(environ):
        return f"the first steps compile, usually ~{FIRST_STEP_WARM_S} s with the warm cache in {compile_cache_dir(environ)}"
    return f"the first steps compile, usually ~{FIRST_STEP_COLD_S} s the first time on a machine (cold cache)"


# -- caches ---------------------------------------------------------------------------------------
def compile_cache_dir(environ: Optional[MutableMapping[str, str]] = None) -> Path:
    """$FSD_GS_COMPILE_CACHE, else $XDG_CACHE_HOME/fsd_gs/compile, else ~/.cache/fsd_gs/compile."""
    environ = os.environ if environ is None else environ
    if environ.get(CACHE_ENV):
        return Path(environ[CACHE_ENV]).expanduser()
    base = Path(environ["XDG_CACHE_HOME"]).expanduser() if environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "fsd_gs" / "compile"


def compile_cache_warm(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """True when the compile cache folder has entries (an earlier compiled run on this machine): compiling is then
    mostly reading kernels back (~10 s, not ~90 s). Entries of another model or GPU count too (a rough test)."""
    folder = compile_cache_dir(environ)
    return folder.is_dir() and any(folder.iterdir())


def setup_compile_cache(environ: Optional[MutableMapping[str, str]] = None) -> dict[str, str]:
    """Point torch.compile's on-disk caches at a stable per-user folder so that compiling is paid once.

    Sets TORCHINDUCTOR_CACHE_DIR (inductor's FX graph cache, its AOTAutograd cache and, inside it, the Triton
    kernels: ``<dir>/triton``) to :func:`compile_cache_dir` unless the user set it already (torch's own default,
    /tmp/torchinductor_<user>, which importing inductor writes into the environment, does not count), and turns the FX
    graph and AOTAutograd caches on (env and live config). Call it before the first compiled call of the
    process (the cache folder is read then). Returns the variables it set (empty when all were set by the user).
    """
    environ = os.environ if environ is None else environ
    wanted = {
        "TORCHINDUCTOR_CACHE_DIR": str(compile_cache_dir(environ)),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
    }
    changed = {name: value for name, value in wanted.items() if not _set_by_user(environ, name)}
    environ.update(changed)
    Path(environ["TORCHINDUCTOR_CACHE_DIR"]).mkdir(parents=True, exist_ok=True)
    if environ is os.environ:  # the config modules read the env at import: set the live values too
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        if "TORCHINDUCTOR_FX_GRAPH_CACHE" in changed:
            inductor_config.fx_graph_cache = True
        if "TORCHINDUCTOR_AUTOGRAD_CACHE" in changed:
            functorch_config.enable_autograd_cache = True
    return changed


def _set_by_user(environ: MutableMapping[str, str], name: str) -> bool:
    """True when ``name`` is set, and for the cache folder to something else than the default that importing
    torch._inductor writes into the environment itself (/tmp/torchinductor_<user>)."""
    value = environ.get(name)
    if not value:
        return False
    if name != "TORCHINDUCTOR_CACHE_DIR":
        return True
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # pragma: no cover - a torch without that private module
        return True
    return os.path.abspath(value) != os.path.abspath(default_cache_dir())


# -- compiling ------------------------------------------------------------------------------------
def compile_module(module: torch.nn.Module, mode: str) -> None:
    """torch.compile ``module`` in place (its attributes, e.g. ``.config``, stay reachable); "off" and "graphs" do
    nothing ("graphs" records the prior's UNet call instead, fsd_gs/prior/graphs.py).

    Static shapes (dynamic=False): a run's UNet and VAE shapes never change, and another batch (sampling,
    several seeds together) simply compiles its own graph. "cudagraphs" = mode "reduce-overhead": outputs
    live in a CUDA-graph pool and are overwritten by the next replay, so callers copy what they keep.
    """
    if mode in ("off", "graphs"):
        return
    if mode not in ("on", "cudagraphs"):
        raise ValueError(f"compile mode must be off, on, cudagraphs or graphs here (resolve auto first), got {mode!r}")
    module.compile(fullgraph=False, dynamic=False, mode="reduce-overhead" if mode == "cudagraphs" else None)


def mark_step_begin(mode: str) -> None:
    """Tell CUDA-graph trees a new training step starts (outputs of the previous one may be overwritten now)."""
    if mode == "cudagraphs":
        torch.compiler.cudagraph_mark_step_begin()
