"""Step-time benchmark: the full training step of fsd_gs.train against the cost of the diffusion model itself.

The floor of one distillation step with a latent model is the guided denoiser forward (cond + uncond in one
batch: the UNet of Stable Diffusion 1/2, the MMDiT transformer of Stable Diffusion 3) plus the VAE encoder forward
and backward, at the same batch, resolution, dtype and compile settings as the step. Everything else (rendering,
noise, loss, Adam, Python, host syncs) is overhead; this script measures both and their ratio, with a per-stage
breakdown of the step.

Each variant runs in a fresh child process (``--no-fresh-process``: in this process, one after another,
each prior freed before the next), so its peak GPU memory (allocated and reserved, weights included) is
its own (and the process's peak host memory, peak_host_rss_gb), and its start-up is reported apart from the
steady state: prior load, gsplat's first render (JIT build or load), the first step (compilation) and the rest of
the warm-up (CUDA-graph recording).

On a CUDA GPU (builds a random-weight SD-2.1-base pipeline from its config first: same FLOPs as the
real model, no download):
    python scripts/bench_step.py --out bench_step.json
    python scripts/bench_step.py --model /tmp/sd21-random --grid speed --profile --repeat 2
    python scripts/bench_step.py --model /tmp/sd21-random --variants 512px/1v/100k/cudagraphs --asset-steps 1200
Start-up (issue 27): eager, graphs and cudagraphs from an empty compile cache (run 0 compiles cold, run 1 warm), then
the grouped graphs step and 1200-step assets with graphs and with (warm) cudagraphs, in the same cache:
    export FSD_GS_COMPILE_CACHE=$(mktemp -d)
    python scripts/bench_step.py --grid startup --repeat 2 --out startup.json
    GRAPHS="512px/4s/100k/graphs 512px/4v/100k/graphs"
    python scripts/bench_step.py --variants $GRAPHS --asset-steps 1200 --asset-compile graphs cudagraphs --out assets.json
Stable Diffusion 3.5-medium (random weights; the model's own preset, fsd-sd35; bf16 on CUDA), without and with T5:
    python scripts/make_random_pipeline.py --kind sd35m --out /tmp/sd35m
    python scripts/bench_step.py --model /tmp/sd35m --variants 512px/1v/100k/eager --warmup 3 --iters 10
    python scripts/make_random_pipeline.py --kind sd35m --t5 True --out /tmp/sd35m-t5
    python scripts/bench_step.py --model /tmp/sd35m-t5 --prior-t5 on --variants 512px/1v/100k/eager --warmup 3 --iters 10
On the CPU with the built-in prior:
    python scripts/bench_step.py --model shapes --device cpu --grid cpu
Perp-Neg's cost per step (--guidance.perp-neg: 2 + 2 UNet rows per view instead of 2): the same variants twice,
    python scripts/bench_step.py --variants 512px/1v/100k/cudagraphs 512px/4v/100k/cudagraphs --out plain.json
    python scripts/bench_step.py --variants 512px/1v/100k/cudagraphs 512px/4v/100k/cudagraphs --perp-neg --out perpneg.json

Variant names: RESpx/VIEWSv/THOUSANDSk/MODE with MODE eager, compiled (torch.compile), cudagraphs (compiled
+ CUDA graphs) or graphs (CUDA graphs of the eager UNet call, no compile); RESpx/SEEDSs/THOUSANDSk/MODE is the
grouped step of the batch (``--group-seeds``): SEEDS assets of one view each (THOUSANDS Gaussians each) stepped by
fsd_gs.step.step_together with one prior call, the same prior work as SEEDS views (``--grid grouped`` puts
512px/4s/100k/cudagraphs beside 512px/4v/100k/cudagraphs); a /separate suffix renders the grouped step's assets
with one gsplat call each instead of one call for all (--render.no-join-assets; ``--grid joined`` compares both at 4
and 8 seeds).
``--repeat 2`` runs each variant twice (the second start-up shows the warm compile cache). ``--grid startup`` compares
eager, graphs and cudagraphs (start-up: the first step includes the compile or the CUDA-graph recording); with an empty
$FSD_GS_COMPILE_CACHE and --repeat 2 the cudagraphs rows show the cold and the warm compile (info.compile_cache_warm
says whether the cache had entries when the benchmark started).
``--profile`` writes torch.profiler tables of steady steps, of the VAE encoder forward+backward alone and of
the guided UNet (or transformer) alone (profile_<variant>_{step,floor_vae,floor_unet}.txt next to --out).
``--asset-steps N`` also trains whole assets of the model's default preset through ``python -m fsd_gs.train`` (one
fresh process per --asset-compile mode) and reports load, first step (compile) and steps apart. Densification is off in the
step variants so the Gaussian count stays as given. "step ms" is the median of single steps, each synchronised (the
host's work before the GPU's is not hidden); "step ms, one sync per run" (step_pipelined_ms) times --iters steps
with one sync at the end, as the training loop runs them. Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import torch

from fsd_gs.errors import UserError
from fsd_gs.profiling import synchronize

ROOT = Path(__file__).resolve().parent.parent
MODE_NAMES = {"off": "eager", "on": "compiled", "cudagraphs": "cudagraphs", "graphs": "graphs"}
"""--prior.compile mode -> the word in variant names."""
_NAME = re.compile(r"^(\d+)px/(\d+)([vs])/(\d+)k/(eager|compiled|cudagraphs|graphs)(/separate)?$")


@dataclass(frozen=True)
class Variant:
    resolution: int
    views: int
    gaussians: int
    compile: Literal["off", "on", "cudagraphs", "graphs"] = "off"
    seeds: int = 1
    """Assets stepped together (step_together, one prior call); each has ``views`` views and ``gaussians``."""
    join: bool = True
    """Grouped steps render their assets in one gsplat call (--render.join-assets); False: one call each (/separate)."""

    @property
    def name(self) -> str:
        count = f"{self.seeds}s" if self.seeds > 1 else f"{self.views}v"
        separate = "" if self.join or self.seeds == 1 else "/separate"
        return f"{self.resolution}px/{count}/{self.gaussians // 1000}k/{MODE_NAMES[self.compile]}{separate}"

    @property
    def batch(self) -> int:
        """Views per prior call: views x seeds."""
        return self.views * self.seeds

    @property
    def slug(self) -> str:
        """The name as a file-name part."""
        return self.name.replace("/", "_")

    @classmethod
    def parse(cls, name: str) -> Variant:
        """The variant named ``name`` (e.g. 512px/1v/100k/cudagraphs); UserError when malformed."""
        match = _NAME.match(name.strip())
        if match is None:
            raise UserError(
                f"variant {name!r} is not RESpx/VIEWSv/THOUSANDSk/MODE or RESpx/SEEDSs/THOUSANDSk/MODE[/separate] "
                "(MODE eager, compiled, cudagraphs or graphs), e.g. 512px/1v/100k/cudagraphs or 512px/4s/100k/cudagraphs"
            )
        res, count, kind, kilo, mode, separate = match.groups()
        modes = {word: key for key, word in MODE_NAMES.items()}
        views, seeds = (int(count), 1) if kind == "v" else (1, int(count))
        return cls(int(res), views, int(kilo) * 1000, modes[mode], seeds, join=separate is None)  # type: ignore[arg-type]


GRIDS: dict[str, list[Variant]] = {
    # one factor at a time around the default step (512 px, 1 view, 100k Gaussians), eager and compiled
    "default": [
        Variant(512, 1, 100_000),
        Variant(256, 1, 100_000),
        Variant(512, 4, 100_000),
        Variant(512, 1, 10_000),
        Variant(512, 1, 1_000_000),
        Variant(512, 1, 100_000, "on"),
        Variant(512, 4, 100_000, "on"),
        Variant(512, 1, 100_000, "cudagraphs"),
        Variant(512, 4, 100_000, "cudagraphs"),
    ],
    "speed": [Variant(512, 1, 100_000, "on"), Variant(512, 1, 100_000, "cudagraphs"), Variant(512, 1, 100_000)],
    "quick": [Variant(512, 1, 100_000), Variant(512, 4, 100_000)],
    "cpu": [Variant(64, 1, 2_000), Variant(64, 1, 8_000), Variant(64, 4, 2_000), Variant(64, 1, 2_000, seeds=4)],
    # the batch's grouped step beside the same prior work as views, in each compile mode (#27)
    "grouped": [
        Variant(512, 4, 100_000, "cudagraphs"),
        Variant(512, 1, 100_000, "cudagraphs", seeds=4),
        Variant(512, 4, 100_000),
        Variant(512, 1, 100_000, seeds=4),
        Variant(512, 1, 100_000, "cudagraphs"),
    ],
    # the grouped step with its assets in one gsplat call and in one call each, beside K views, at 4 and 8 (#27);
    # CUDA graphs without compile: no compile per batch shape, so six fresh processes fit one device call
    "joined": [
        Variant(512, 4, 100_000, "graphs"),
        Variant(512, 1, 100_000, "graphs", seeds=4),
        Variant(512, 1, 100_000, "graphs", seeds=4, join=False),
        Variant(512, 8, 100_000, "graphs"),
        Variant(512, 1, 100_000, "graphs", seeds=8),
        Variant(512, 1, 100_000, "graphs", seeds=8, join=False),
    ],
    # start-up against steady state: CUDA graphs without compile beside eager and compiled ones (#27)
    "startup": [Variant(512, 1, 100_000), Variant(512, 1, 100_000, "graphs"), Variant(512, 1, 100_000, "cudagraphs")],
}


@dataclass
class Args:
    """Benchmark the training step against the diffusion model's own cost."""

    model: Optional[str] = None
    """Prior: a diffusers folder (Stable Diffusion 1/2 or 3), "shapes", or None to build a random-weight SD-2.1-base
    pipeline in --work."""
    work: Path = Path("/tmp/fsd_gs_bench")
    """Scratch folder (the random pipeline is built here once; --asset-steps runs go here)."""
    out: Path = Path("bench_step.json")
    """Where the JSON results go (child logs and profile tables go next to it)."""
    device: str = "auto"
    """auto, cpu or cuda."""
    grid: Literal["default", "speed", "quick", "cpu", "grouped", "joined", "startup"] = "default"
    """Which variants to run (see GRIDS); --variants overrides it."""
    variants: tuple[str, ...] = ()
    """Run these variants instead of the grid's, e.g. 512px/1v/100k/cudagraphs 512px/1v/100k/eager."""
    fresh_process: bool = True
    """Measure each variant in its own child process (peak memory and start-up of that variant alone)."""
    repeat: int = 1
    """Run each variant this many times (fresh processes: the second start-up shows the warm compile cache)."""
    warmup: int = 5
    """Untimed steps before each measurement (compilation, CUDA-graph recording, allocator warm-up)."""
    iters: int = 20
    """Timed steps per measurement."""
    guidance_scale: float = 100.0
    """CFG scale (the cost does not depend on it unless it is 1)."""
    prompt: Optional[str] = None
    """Prompt; None: "a red mushroom" for the shapes prior, else "a DSLR photo of a corgi"."""
    profile: bool = False
    """Also write torch.profiler tables (top 40 by device time) of the step, the VAE floor and the UNet floor."""
    profile_steps: int = 10
    """Steady calls recorded per profile table."""
    keep_vae_input_layout: bool = False
    """Feed the VAE encoder the render's channels-last strides as before #17 (for comparing profiles); the floor
    then also measures the encoder on such an input (vae_encode_render_layout_ms)."""
    asset_steps: int = 0
    """Also train whole assets of this many steps (default preset, fresh `python -m fsd_gs.train` processes); 0: no."""
    asset_compile: tuple[str, ...] = ("auto",)
    """--prior.compile of each asset run (auto, off, on, cudagraphs, graphs)."""
    prior_t5: Literal["auto", "on", "off"] = "auto"
    """--prior.t5 of the prior (Stable Diffusion 3's T5-XXL text encoder; auto = off; other priors ignore it): on measures
    the step and its peak memory with T5 loaded (the folder must have text_encoder_3/)."""
    perp_neg: bool = False
    """Run every variant with --guidance.perp-neg (Perp-Neg: 2 + 2 UNet rows per view instead of 2; off otherwise, also in
    --asset-steps runs although the default presets fsd-sd21 and fsd-sd35 turn it on); the floor's
    guided UNet then gets the same negatives. Compare with a run without it for Perp-Neg's cost per step."""
    sync_debug: bool = False
    """CUDA: count the host syncs of one steady step (torch.cuda.set_sync_debug_mode) and where they happen
    (syncs_per_step, sync_sites in the row): each one stalls the GPU queue while Python prepares the next work."""
    child: bool = False
    """Internal: measure the one --variants entry in this process and write its row to --out."""


# -- measuring ------------------------------------------------------------------------------------
def default_prompt(model: str) -> str:
    """The benchmark's prompt: one the built-in shapes-world priors know, else a DSLR corgi."""
    from fsd_gs.prior.detectors import is_shapes_world

    return "a red mushroom" if is_shapes_world(model) else "a DSLR photo of a corgi"


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median over ``iters`` single calls of ``fn`` in milliseconds (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def pipelined_ms(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Milliseconds per call of ``fn`` over ``iters`` calls with one sync at the end, as the training loop runs (it
    syncs only to log): the host prepares the next step while the GPU finishes this one. ``time_ms`` syncs after
    every call, so there the host's work before the GPU's adds up instead of overlapping it."""
    return timed_s(lambda: [fn() for _ in range(iters)], device) * 1e3 / max(1, iters)


def timed_s(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn`` (synchronised)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def floor_calls(
    prior,
    prompt: str,
    variant: Variant,
    guidance_scale: float,
    device: torch.device,
    render_layout: bool = False,
    perp_neg: bool = False,
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(guided denoiser forward, VAE encode forward+backward) at the variant's batch and resolution.

    The denoiser is the prior's network (the UNet, or Stable Diffusion 3's transformer) in ONE guided ``predict``
    call. It gets random latents (no extra encoder call, so no extra compiled graph); the encoder gets a
    contiguous image, or with ``render_layout`` a [B,H,W,3] tensor permuted to [B,3,H,W] as renders are.
    ``perp_neg``: the guided UNet also predicts Perp-Neg's negatives (views at azimuth 30, in the same call).
    """
    gen = torch.Generator(device=device).manual_seed(0)
    size = (variant.batch, 3, variant.resolution, variant.resolution)
    if render_layout:
        images = torch.rand(size[0], size[2], size[3], 3, device=device, generator=gen).permute(0, 3, 1, 2)
    else:
        images = torch.rand(size, device=device, generator=gen)
    images.requires_grad_(True)
    embeddings = prior.encode_prompts(prompt, "", True)
    negatives = None
    if perp_neg:
        from fsd_gs.perp_neg import PerpNegWeights, select

        conditioning, negatives = select(
            embeddings, torch.full((variant.batch,), 30.0), torch.zeros(variant.batch), PerpNegWeights()
        )
    else:
        conditioning = embeddings.select(["front"] * variant.batch)
    shape = prior.model_shape(variant.resolution, variant.resolution)
    z = torch.randn(variant.batch, *shape, device=device, generator=gen)
    t = torch.full((variant.batch,), 500, device=device, dtype=torch.long)

    def unet() -> None:
        prior.predict(z, t, conditioning, guidance_scale, negatives)

    def encoder() -> None:
        out = prior.encode_images(images)
        out.backward(torch.ones_like(out))
        images.grad = None

    return unet, encoder


def train_config(model: str, prompt: str, variant: Variant, device: torch.device, perp_neg: bool = False):
    """The model's default FSD config (fsd-sd21, fsd-sd35, shapes-fsd, ...) at the variant's size, densification off,
    ``variant.compile`` as the prior mode (and ``--guidance.perp-neg`` when ``perp_neg``)."""
    from fsd_gs.config import TrainConfig, base_config

    cfg: TrainConfig = base_config("fsd", None, model)
    cfg = dataclasses.replace(
        cfg,
        prompt=prompt,
        model=model,
        steps=10_000,
        device=str(device),
        camera=dataclasses.replace(cfg.camera, width=variant.resolution, height=variant.resolution, batch_size=variant.views),
        gaussians=dataclasses.replace(cfg.gaussians, num_points=variant.gaussians),
        densify=dataclasses.replace(cfg.densify, enabled=False),
        render=dataclasses.replace(cfg.render, join_assets=variant.join),
        prior=dataclasses.replace(cfg.prior, compile=variant.compile),
        guidance=dataclasses.replace(cfg.guidance, perp_neg=perp_neg),
    )
    cfg.validate()
    return cfg


def first_render(cfg, device: torch.device) -> None:
    """One small render: on CUDA the first gsplat call builds or loads its JIT extension."""
    from fsd_gs.camera import OrbitSampler
    from fsd_gs.initialize import init_gaussians
    from fsd_gs.render import render

    cams = OrbitSampler(cfg.camera, device="cpu").sample(torch.Generator().manual_seed(0)).to(device)
    gaussians = init_gaussians(dataclasses.replace(cfg.gaussians, num_points=1000), torch.Generator().manual_seed(0), device)
    with torch.no_grad():
        render(gaussians, cams, torch.ones(len(cams), 3, device=device), cfg.render)


def write_profile(fn: Callable[[], object], device: torch.device, calls: int, path: Path, title: str) -> None:
    """A torch.profiler table (top 40 by device time on CUDA, CPU time otherwise) of ``calls`` calls of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        synchronize(device)
    key = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=90)
    path.write_text(f"{title}: {calls} calls, sorted by {key}\n{table}\n")


def count_syncs(fn: Callable[[], object], device: torch.device) -> dict:
    """Host syncs of one call of ``fn`` on CUDA, by the Python line that caused them (``{}`` on the CPU)."""
    import warnings
    from collections import Counter

    if device.type != "cuda":
        return {}
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return {"syncs_per_step": sum(sites.values()), "sync_sites": dict(sites.most_common(20))}


def memory_gb(device: torch.device) -> dict:
    """Peak allocated and reserved GPU memory since the last reset (None on the CPU), and this process's peak resident
    host memory so far (peak_host_rss_gb; None where the platform does not report it)."""
    host = peak_host_rss_gb()
    if device.type != "cuda":
        return {"peak_allocated_gb": None, "peak_reserved_gb": None, "peak_host_rss_gb": host}
    return {
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved(device) / 2**30, 3),
        "peak_host_rss_gb": host,
    }


def graph_stats(prior) -> dict:
    """Under --prior.compile graphs: the UNet call's recorded graphs (one per batch shape), the seconds their warm-up
    and recording took (part of the first step) and the calls that ran eagerly; ``{}`` in the other modes."""
    from fsd_gs.prior.graphs import GraphedCall

    call = getattr(prior, "unet_call", None)
    if not isinstance(call, GraphedCall):
        return {}
    return {"graphs": {"recorded": len(call.recordings), "capture_s": round(call.capture_s, 2), "eager_calls": call.eager_calls}}


def peak_host_rss_gb() -> Optional[float]:
    """The process's peak resident set size in GiB (Linux reports ru_maxrss in KiB), or None without ``resource``."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def measure_variant(model: str, variant: Variant, args: Args, device: torch.device) -> dict:
    """Load, first render, first step, warm-up, steady step, stages, floor (and profiles) of one variant."""
    from fsd_gs.prior.factory import load_prior
    from fsd_gs.step import DistillStep, step_together

    prompt = args.prompt or default_prompt(model)
    cfg = train_config(model, prompt, variant, device, args.perp_neg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gsplat_s = timed_s(lambda: first_render(cfg, device), device)
    prior = load_prior(model, dataclasses.replace(cfg.prior, t5=args.prior_t5), device)
    if args.keep_vae_input_layout and hasattr(prior, "vae_input_format"):
        prior.vae_input_format = None
    steps = [DistillStep(dataclasses.replace(cfg, seed=seed), prior, device) for seed in range(variant.seeds)]
    step: Callable[[], object] = steps[0] if variant.seeds == 1 else (lambda: step_together(steps))
    first_s = timed_s(step, device)
    warm_s = timed_s(lambda: [step() for _ in range(max(0, args.warmup - 1))], device)
    step_ms = time_ms(step, device, 0, args.iters)
    step_pipelined_ms = pipelined_ms(step, device, args.iters)
    memory = memory_gb(device)
    for s in steps:
        s.timer.enabled = True
    for _ in range(args.iters):
        step()
    stages: dict[str, float] = {}  # per step of the whole group: each seed's stages added up
    for s in steps:
        for name, ms in s.timer.summary().items():
            stages[name] = stages.get(name, 0.0) + ms
        s.timer.enabled = False
    syncs = count_syncs(step, device) if args.sync_debug else {}
    unet, encoder = floor_calls(prior, prompt, variant, args.guidance_scale, device, perp_neg=args.perp_neg)
    unet_ms = time_ms(unet, device, args.warmup, args.iters)
    vae_ms = time_ms(encoder, device, args.warmup, args.iters) if prior.space == "latent" else 0.0
    floor = unet_ms + vae_ms
    row = {
        "variant": variant.name,
        **dataclasses.asdict(variant),
        "prior": type(prior).__name__,
        "denoiser": "transformer" if hasattr(prior, "transformer") else "unet",
        "prior_dtype": str(prior.dtype).removeprefix("torch."),
        "prior_t5": args.prior_t5,
        "perp_neg": args.perp_neg,
        "compile_decision": str(prior.compile_decision),
        "startup_s": {
            "gsplat_first_render": round(gsplat_s, 2),
            "prior_load": round(prior.load_seconds, 2),
            "first_step": round(first_s, 2),
            "rest_of_warmup": round(warm_s, 2),
            "total": round(gsplat_s + prior.load_seconds + first_s + warm_s, 2),
        },
        "unet_guided_ms": round(unet_ms, 2),
        "vae_encode_fwd_bwd_ms": round(vae_ms, 2),
        "floor_ms": round(floor, 2),
        "step_ms": round(step_ms, 2),
        "ratio": round(step_ms / floor, 3),
        "step_pipelined_ms": round(step_pipelined_ms, 2),
        "stages_ms": {k: round(v, 2) for k, v in stages.items()},
        **memory,
        **syncs,
        **graph_stats(prior),
    }
    if args.keep_vae_input_layout and prior.space == "latent":
        _, encoder_render = floor_calls(prior, prompt, variant, args.guidance_scale, device, render_layout=True)
        row["vae_encode_render_layout_ms"] = round(time_ms(encoder_render, device, args.warmup, args.iters), 2)
    if args.profile:
        where = args.out.parent
        calls = {"step": step, "floor_unet": unet, **({"floor_vae": encoder} if prior.space == "latent" else {})}
        for what, fn in calls.items():
            path = where / f"profile_{variant.slug}_{what}.txt"
            write_profile(fn, device, args.profile_steps, path, f"{variant.name} {what}")
            row.setdefault("profiles", []).append(str(path))
    return row


# -- processes ------------------------------------------------------------------------------------
def child_argv(args: Args, model: str, variant: Variant, out: Path) -> list[str]:
    """The command line measuring ``variant`` alone in a child process (writes its row to ``out``)."""
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--variants",
        variant.name,
        "--out",
        str(out),
        "--model",
        model,
        "--work",
        str(args.work),
        "--device",
        args.device,
        "--warmup",
        str(args.warmup),
        "--iters",
        str(args.iters),
        "--guidance-scale",
        str(args.guidance_scale),
    ]
    if args.prompt:
        argv += ["--prompt", args.prompt]
    if args.profile:
        argv += ["--profile", "--profile-steps", str(args.profile_steps)]
    if args.keep_vae_input_layout:
        argv += ["--keep-vae-input-layout"]
    if args.perp_neg:
        argv += ["--perp-neg"]
    if args.prior_t5 != "auto":
        argv += ["--prior-t5", args.prior_t5]
    if args.sync_debug:
        argv += ["--sync-debug"]
    return argv


def run_child(args: Args, model: str, variant: Variant, run: int) -> dict:
    """``variant`` measured in a fresh process; its log goes next to --out; a failure becomes an error row."""
    stem = f"{args.out.stem}_{variant.slug}_run{run}"
    out, log = args.out.parent / f"{stem}.json", args.out.parent / f"{stem}.log"
    t0 = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(child_argv(args, model, variant, out), stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    process_s = round(time.perf_counter() - t0, 2)
    if done.returncode != 0 or not out.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"variant": variant.name, "run": run, "error": f"exit {done.returncode}: {' | '.join(tail)}", "log": str(log)}
    row = json.loads(out.read_text())
    out.unlink()
    return {**row, "run": run, "process_s": process_s, "log": str(log)}


def measure_asset(args: Args, model: str, mode: str) -> dict:
    """One whole asset of the default preset through ``python -m fsd_gs.train`` in a fresh process (with Perp-Neg
    when --perp-neg)."""
    prompt = args.prompt or default_prompt(model)
    log = args.out.parent / f"{args.out.stem}_asset_{mode}.log"
    cmd = [
        sys.executable,
        "-m",
        "fsd_gs.train",
        "--prompt",
        prompt,
        "--model",
        model,
        "--steps",
        str(args.asset_steps),
        "--device",
        args.device,
        "--prior.compile",
        mode,
        "--output-dir",
        str(args.work / "assets"),
        "--output.turntable-views",
        "4",
        "--output.no-progress",
        "--prior.t5",
        args.prior_t5,
    ] + (["--guidance.perp-neg"] if args.perp_neg else ["--guidance.no-perp-neg"])  # explicit: fsd-sd21/-sd35 turn it on
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    process_s = time.perf_counter() - t0
    log.write_text(done.stdout + done.stderr)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"asset": mode, "error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}", "log": str(log)}
    run_dir = Path(lines[-1])
    report = json.loads((run_dir / "report.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps_s = float(metrics[-1]["wall_time"])  # from the run's start to its last step (checkpoints included)
    first = float(report["first_step_s"])
    return {
        "asset": mode,
        "steps": args.asset_steps,
        "compile": report.get("compile"),
        "process_s": round(process_s, 1),
        "prior_load_s": report.get("prior_load_s"),
        "first_step_s": round(first, 2),
        "steps_s": round(steps_s, 1),
        "steady_ms_per_step": round((steps_s - first) / max(1, args.asset_steps - 1) * 1e3, 2),
        "finish_s": round(float(report["wall_time_s"]) - steps_s, 1),
        "peak_gpu_memory_gb": report.get("peak_gpu_memory_gb"),
        "peak_gpu_reserved_gb": report.get("peak_gpu_reserved_gb"),
        "run_dir": str(run_dir),
        "log": str(log),
    }


def free(device: torch.device) -> None:
    """Drop unreferenced models and cached GPU blocks (between in-process variants)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def chosen_variants(args: Args) -> list[Variant]:
    return [Variant.parse(name) for name in args.variants] if args.variants else GRIDS[args.grid]


def main(argv: list[str] | None = None) -> int:
    import tyro

    from fsd_gs.device import resolve_device
    from fsd_gs.prior.compile import compile_cache_warm

    args = tyro.cli(Args, args=argv)
    device = resolve_device(args.device)
    variants = chosen_variants(args)
    model = args.model
    if model is None:
        from fsd_gs.prior.random_pipeline import save_sd21_base_random_pipeline

        folder = args.work / "sd21-random"
        if not (folder / "model_index.json").is_file():
            print(f"building a random-weight SD-2.1-base pipeline in {folder} ...", flush=True)
            save_sd21_base_random_pipeline(folder, seed=0)
        model = str(folder)
    if args.child:
        if len(variants) != 1:
            raise UserError("--child measures exactly one variant: pass one --variants name")
        args.out.write_text(json.dumps(measure_variant(model, variants[0], args, device)))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    assets: list[dict] = []
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "model": model,
        "perp_neg": args.perp_neg,
        "compile_cache_warm": compile_cache_warm(),
        "prior_t5": args.prior_t5,
        "command": "python scripts/bench_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }

    def save() -> None:  # after each measurement
        args.out.write_text(json.dumps({"info": info, "rows": rows, "assets": assets}, indent=1))

    for variant in variants:
        for run in range(max(1, args.repeat)):
            print(f"-- {variant.name} (run {run})", flush=True)
            if args.fresh_process:
                rows.append(run_child(args, model, variant, run))
            else:
                try:
                    rows.append({**measure_variant(model, variant, args, device), "run": run})
                except torch.OutOfMemoryError as exc:
                    rows.append({"variant": variant.name, "run": run, "error": f"out of memory: {str(exc).splitlines()[0]}"})
                free(device)
            print(json.dumps(rows[-1]), flush=True)
            save()
    for mode in args.asset_compile if args.asset_steps > 0 else ():
        print(f"-- asset: {args.asset_steps} steps, --prior.compile {mode}", flush=True)
        assets.append(measure_asset(args, model, mode))
        print(json.dumps(assets[-1]), flush=True)
        save()
    print_table(info, rows, assets)
    return 0


def print_table(info: dict, rows: list[dict], assets: list[dict]) -> None:
    print(f"\n{info['device']}, torch {info['torch']}, {info['date']}{', Perp-Neg on' if info.get('perp_neg') else ''}")
    print(
        "| variant | run | start-up s (gsplat / load / 1st step / warm-up) | UNet/transformer guided ms | "
        "VAE enc f+b ms | floor ms | step ms | step/floor | step ms, one sync per run | peak alloc / reserved GB | "
        "peak host RSS GB | stages ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | {r.get('run', 0)} | {r['error']} |")
            continue
        s = r["startup_s"]
        stages = ", ".join(f"{k} {v}" for k, v in r["stages_ms"].items())
        print(
            f"| {r['variant']} | {r.get('run', 0)} | {s['total']} ({s['gsplat_first_render']} / {s['prior_load']} / "
            f"{s['first_step']} / {s['rest_of_warmup']}) | {r['unet_guided_ms']} | {r['vae_encode_fwd_bwd_ms']} | "
            f"{r['floor_ms']} | {r['step_ms']} | {r['ratio']} | {r.get('step_pipelined_ms')} | "
            f"{r['peak_allocated_gb']} / {r['peak_reserved_gb']} | "
            f"{r.get('peak_host_rss_gb')} | {stages} |"
            + (f" syncs/step {r['syncs_per_step']}: {r['sync_sites']}" if "syncs_per_step" in r else "")
        )
    for a in assets:
        if "error" in a:
            print(f"asset --prior.compile {a['asset']}: {a['error']}")
            continue
        print(
            f"asset --prior.compile {a['asset']} [{a['compile']}]: {a['steps']} steps in {a['steps_s']} s "
            f"(first step {a['first_step_s']} s, then {a['steady_ms_per_step']} ms/step); prior load "
            f"{a['prior_load_s']} s; process {a['process_s']} s; peak {a['peak_gpu_memory_gb']} GB allocated, "
            f"{a['peak_gpu_reserved_gb']} GB reserved"
        )


if __name__ == "__main__":
    from fsd_gs.errors import run_cli

    sys.exit(run_cli(main))
