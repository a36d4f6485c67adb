"""Train the built-in "shapes" prior (pixel-space text-to-image diffusion) and its judge, from scratch; or, with
``--objective flow``, its rectified-flow twin "shapes-flow" from the shipped weights.

    python scripts/train_shapes_prior.py --out runs/shapes --time-budget-s 480            # first run
    python scripts/train_shapes_prior.py --out runs/shapes --time-budget-s 480 --resume   # later runs go on
    python scripts/train_shapes_prior.py --out runs/shapes --tiny --steps 6               # CPU smoke test
    python scripts/train_shapes_prior.py --objective flow --out runs/flow --time-budget-s 480   # shapes-flow

Data comes on the fly: worker processes build random objects of the shapes world (fsd_gs/shapes/world.py)
into a bank of objects on the GPU; every step replaces a few of them and renders random views of
``batch_objects`` of them (one rasterizer call, fsd_gs/shapes/dataset.py) with training captions.
One step trains the UNet + text encoder (epsilon loss with min-SNR weighting, bf16 autocast on CUDA,
AdamW, warm-up then cosine decay) and the judge (cross-entropy on kind, colour and view, on augmented
copies of the same images). An EMA of the UNet and text encoder is what gets shipped.

Checkpoint = the shipped folder itself (fp16 EMA weights + judge + ``shapes.json`` with the step count),
written to ``--out``/shapes_prior and packed as ``--out``/shapes_prior.tar every ``--save-every-s``
seconds and at the end. ``--resume`` continues from it: the EMA becomes the training weights, Adam
restarts with a short warm-up, the learning-rate schedule continues at the saved step (or, with
``--decay-over-run``, restarts at its peak and anneals over the new run's time budget). Runs therefore
fit any time limit (the checkpoint is 13 MiB, small enough to carry between machines), at the cost of
restarting the optimizer state -- the "training noise" between a one-run and a several-run recipe.

``--objective flow`` (docs/shapes-flow.md) starts from ``--init-from`` (default: the shipped fsd_gs/assets/shapes_prior)
and writes ``--out``/shapes_flow, a rectified-flow prior: the same UNet read through the exact VP -> flow conversion
(fsd_gs/prior/vp_flow.py), fine-tuned with the velocity loss at logit-normal flow times (fsd_gs/shapes/objective.py),
a FlowMatchEulerDiscreteScheduler config with ``--flow-shift``, and the judge copied unchanged (not trained).

The first weights (step 2651) came from three runs on one H100, each a
7-9.5-minute machine call (gsplat's JIT build and the object bank took ~2 minutes of each):

    # run 1: 1016 steps of 48 objects x 4 views, lr 4e-4 after 500 warm-up steps (barely decayed)
    python scripts/train_shapes_prior.py --out /tmp/run --time-budget-s 425 --save-every-s 90 --steps 16000 \
        --batch-objects 48 --bank-refresh 12 --workers 14 --eval-at-end
    # run 2: 970 more steps of 96 objects x 4 views, cosine 4e-4 -> 4e-5 over the run
    python scripts/train_shapes_prior.py --out /tmp/run --resume --resume-from <run 1's shapes_prior> \
        --decay-over-run --time-budget-s 465 --save-every-s 90 --steps 100000 --eval-at-end
    # run 3: 665 more steps, cosine again over the run
    python scripts/train_shapes_prior.py --out /tmp/run --resume --resume-from <run 2's shapes_prior> \
        --decay-over-run --time-budget-s 390 --save-every-s 90 --steps 100000 --workers 6

(Runs 1-2: 567,552 images, 748 s inside the training loop; run 3: 665 steps in about 230 s.) That was step 2651.
Two more resumed runs on one H200 (2026-12-01) with more colour-free captions made the shipped step 5099 (sweep
and figures in BENCHMARKS.md, "a better shapes prior"):

    # run 4: 1696 more steps, cosine 2e-4 -> 4e-5 over the run, 45% of captions without a colour word
    python scripts/train_shapes_prior.py --out /tmp/g/prior --resume --resume-from <step 2651> --decay-over-run \
        --time-budget-s 478 --save-every-s 45 --steps 100000 --workers 8 --lr 2e-4 --dataset.captions.p-no-colour 0.45
    # run 5: 752 more steps, the same at lr 1.5e-4 for 250 s
    python scripts/train_shapes_prior.py --out /tmp/g/prior2 --resume --resume-from <run 4's shapes_prior> \
        --decay-over-run --time-budget-s 250 --save-every-s 45 --steps 100000 --workers 8 --lr 1.5e-4 \
        --dataset.captions.p-no-colour 0.45
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from fsd_gs.io.atomic import atomic_open
from fsd_gs.shapes.dataset import DatasetConfig, ShapesDataset
from fsd_gs.shapes.judge import Judge, load_judge
from fsd_gs.shapes.model import (
    build_networks,
    copy_tokenizer,
    flow_network,
    folder_size,
    load_tokenizer,
    save_pipeline,
    save_tokenizer,
    tokenize,
)
from fsd_gs.shapes.objective import FlowTimes, epsilon_loss, flow_loss, sample_flow_times
from fsd_gs.shapes.world import ShapeObject, WorldConfig, sample_object


@dataclass
class TrainShapesConfig:
    """Recipe of the built-in prior (defaults = the shipped weights)."""

    out: Path = Path("runs/shapes_prior")
    """Run folder: checkpoint (shapes_prior/ and shapes_prior.tar), log.jsonl, eval.json."""
    resume: bool = False
    """Continue from --out/shapes_prior (or --resume-from) instead of starting from scratch."""
    resume_from: Optional[Path] = None
    """A prior folder (or .tar) to continue from; default --out/shapes_prior."""
    export: Optional[Path] = None
    """Also copy the final folder here (e.g. fsd_gs/assets/shapes_prior)."""
    mirror: Optional[Path] = None
    """After every save, also copy shapes_prior.tar, log.jsonl and eval.json here (e.g. a folder that is shipped back)."""
    seed: int = 0
    """Seed of the weights' initialisation and of the data (each resumed run adds its segment number)."""
    device: str = "auto"
    """auto | cuda | cpu."""
    steps: int = 40_000
    """Length of the learning-rate schedule (cosine to lr_final); a run stops earlier at its time budget."""
    time_budget_s: float = 1e9
    """Stop (and save) after this many seconds of this run, start-up included."""
    save_every_s: float = 120.0
    """Save the checkpoint this often (seconds), so a killed run loses little."""
    batch_objects: int = 96
    """Objects per step (x views_per_object views)."""
    views_per_object: int = 4
    """Views rendered per object per step."""
    bank_size: int = 3072
    """Objects kept on the device; ``bank_refresh`` of them are replaced by new ones every step."""
    bank_refresh: int = 24
    """New objects per step (from the worker processes)."""
    workers: int = 10
    """Processes building objects (0 = in the main process)."""
    lr: float = 4e-4
    """Peak learning rate of the UNet and text encoder (AdamW)."""
    lr_final: float = 4e-5
    """Learning rate at the end of the schedule."""
    warmup: int = 500
    """Warm-up steps at the start (and 1/5 of it after a resume)."""
    decay_over_run: bool = False
    """Anneal the learning rate (cosine to lr_final) over THIS run's time budget instead of over ``steps``."""
    judge_lr: float = 1e-3
    """Peak learning rate of the judge."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    ema_decay: float = 0.999
    """EMA decay of the shipped weights (ramped up as (1 + n) / (10 + n) in the first steps of a run)."""
    min_snr_gamma: float = 5.0
    """Min-SNR loss weighting: weight min(SNR, gamma) / SNR on the epsilon loss (0 = plain MSE)."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    eval_at_end: bool = False
    """Run the done-when checks at the end (fsd_gs/shapes/evaluate.py) and write eval.json."""
    eval_samples_per_prompt: int = 8
    """Samples per prompt in the end-of-run evaluation."""
    tiny: bool = False
    """CPU smoke test: tiny batches, few objects, 32 px renders... (not for shipping)."""
    log_every: int = 50
    """Print/log every this many steps."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    """Data: resolution, views, backgrounds, world and caption settings."""
    objective: Literal["epsilon", "flow"] = "epsilon"
    """epsilon: the VP prior (--out/shapes_prior). flow: the rectified-flow prior shapes-flow (--out/shapes_flow): the
    UNet under the exact VP -> flow conversion, fine-tuned with the velocity loss from --init-from (or --resume); the
    judge is copied, not trained."""
    init_from: Optional[Path] = None
    """--objective flow without --resume: the epsilon prior folder to start from (default fsd_gs/assets/shapes_prior)."""
    flow_shift: Optional[float] = None
    """--objective flow: the shift of the FlowMatchEulerDiscreteScheduler written to the folder (the sampling grid);
    None: the shift of the flow folder the run starts from, else DEFAULT_FLOW_SHIFT."""
    flow_times: FlowTimes = "logit_normal"
    """--objective flow: how training flow times s are drawn (logit_normal: sigmoid(N(0,1)), or uniform)."""


DEFAULT_FLOW_SHIFT = 3.0
"""shapes-flow's shift (docs/shapes-flow.md): its 50-step Euler samples are as good as at shift 1, and its timesteps then
mean nearly the noise levels of the epsilon prior's linear schedule (|s - s_VP| <= 0.05), so the shapes presets'
schedules carry over."""


def flow_shift_of(cfg: TrainShapesConfig, src: Optional[Path]) -> float:
    """--flow-shift, else the shift of the flow folder ``src``, else :data:`DEFAULT_FLOW_SHIFT`."""
    from fsd_gs.prior.shapes import is_flow_folder

    if cfg.flow_shift is not None:
        return cfg.flow_shift
    if src is not None and is_flow_folder(src):
        return float(json.loads((src / "scheduler" / "scheduler_config.json").read_text()).get("shift", 1.0))
    return DEFAULT_FLOW_SHIFT


def checkpoint_name(cfg: TrainShapesConfig) -> str:
    """The checkpoint folder's name in --out: shapes_prior (epsilon) or shapes_flow (flow)."""
    return "shapes_flow" if cfg.objective == "flow" else "shapes_prior"


# -- data -----------------------------------------------------------------------------------------
class ObjectStream(torch.utils.data.IterableDataset):
    """Endless random objects; worker ``w`` of run segment ``s`` draws from seed hash (seed, s, w)."""

    def __init__(self, seed: int, world: WorldConfig) -> None:
        self.seed, self.world = seed, world

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = 0 if info is None else info.id
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + wid * 7919 + 17)
        while True:
            obj = sample_object(gen, self.world)
            yield {k: v.detach() for k, v in obj.gaussians.params.items()}, obj.kind, obj.colour


def _collate(items):
    return items


def object_loader(seed: int, world: WorldConfig, workers: int):
    loader = torch.utils.data.DataLoader(
        ObjectStream(seed, world),
        batch_size=8,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=8 if workers else None,
        persistent_workers=bool(workers),
    )
    for chunk in loader:
        yield from chunk


def to_object(item, device: torch.device) -> ShapeObject:
    from fsd_gs.gaussians import Gaussians

    params, kind, colour = item
    return ShapeObject(Gaussians({k: v.to(device, non_blocking=True) for k, v in params.items()}, sh_degree=0), kind, colour)


def augment_for_judge(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur some images (down- and up-sampling) and add noise to some: the judge must also read samples and renders
    that are less sharp than the world's."""
    b = images.shape[0]
    dev = images.device
    u = torch.rand(b, 3, generator=gen).to(dev)
    small = torch.nn.functional.interpolate(images, scale_factor=0.5, mode="bilinear", antialias=True)
    blurred = torch.nn.functional.interpolate(small, size=images.shape[-2:], mode="bilinear")
    x = torch.where((u[:, 0] < 0.3).view(b, 1, 1, 1), blurred, images)
    noise = torch.randn(images.shape, generator=gen).to(dev) * (0.06 * u[:, 2]).view(b, 1, 1, 1)
    x = torch.where((u[:, 1] < 0.3).view(b, 1, 1, 1), x + noise, x)
    return x.clamp(0, 1)


# -- schedule and EMA -----------------------------------------------------------------------------
def lr_at(step: int, cfg: TrainShapesConfig, peak: float, warm_start: int, warmup: int, run_progress: float = 0.0) -> float:
    """Linear warm-up from ``warm_start`` over ``warmup`` steps, cosine from ``peak`` to the final ratio
    (progress = step / steps, or the fraction of this run's time budget with ``decay_over_run``)."""
    final = peak * cfg.lr_final / cfg.lr
    progress = min(1.0, run_progress if cfg.decay_over_run else step / max(1, cfg.steps))
    value = final + 0.5 * (peak - final) * (1 + math.cos(math.pi * progress))
    if step - warm_start < warmup:
        value *= (step - warm_start + 1) / warmup
    return value


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)


def warm_up_renderer(device: torch.device) -> None:
    """Render one tiny object once (on CUDA this JIT-compiles gsplat's kernels: run it in a thread early)."""
    from fsd_gs.shapes.dataset import DatasetConfig, ShapesDataset
    from fsd_gs.shapes.world import make_object

    data = ShapesDataset(DatasetConfig(views_per_object=1), device)
    data.render([make_object("cup", "red", torch.Generator().manual_seed(0))], torch.Generator().manual_seed(0))


def training_alphas(device: torch.device) -> torch.Tensor:
    """alpha-bar [T] of the shapes prior's training noise schedule (fsd_gs.shapes.model.SCHEDULER_CONFIG), on ``device``."""
    from diffusers import DDPMScheduler

    from fsd_gs.shapes.model import SCHEDULER_CONFIG

    sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one", "steps_offset")})
    return sched.alphas_cumprod.to(device)


def start_bank(seed: int, world: WorldConfig, workers: int, size: int, device: torch.device):
    """(bank of ``size`` objects on ``device``, the endless object stream that refreshes it); gsplat's JIT build runs in
    a thread while the bank fills (the worker processes fork first, before any thread starts)."""
    import threading

    stream = object_loader(seed, world, workers)
    bank = [to_object(next(stream), device)]
    warm = threading.Thread(target=warm_up_renderer, args=(device,), daemon=True)
    warm.start()
    bank += [to_object(next(stream), device) for _ in range(size - 1)]
    warm.join()
    return bank, stream


# -- checkpoint -----------------------------------------------------------------------------------
def save_prior(cfg: TrainShapesConfig, folder: Path, unet, text_encoder, judge, summary: dict) -> Path:
    """Write the prior folder: the epsilon prior with ``judge``, or (flow) the flow prior with the judge folder it
    started from copied byte for byte."""
    if cfg.objective == "epsilon":
        return save_pipeline(folder, unet, text_encoder, judge, summary=summary, tokenizer=cfg.out / "tokenizer")
    save_pipeline(folder, unet, text_encoder, None, summary=summary, tokenizer=cfg.out / "tokenizer", flow_shift=cfg.flow_shift)
    if (folder / "judge").resolve() != Path(judge.source).resolve():
        shutil.copytree(judge.source, folder / "judge", dirs_exist_ok=True)
    return folder


def save_checkpoint(cfg: TrainShapesConfig, ema_unet, ema_te, judge, summary: dict) -> Path:
    name = checkpoint_name(cfg)
    folder = save_prior(cfg, cfg.out / name, ema_unet, ema_te, judge, summary)
    with atomic_open(cfg.out / f"{name}.tar") as f, tarfile.open(fileobj=f, mode="w") as tar:
        tar.add(folder, arcname=name)
    mirror(cfg)
    return folder


def mirror(cfg: TrainShapesConfig) -> None:
    """Copy the small run files into ``cfg.mirror`` (if set)."""
    if cfg.mirror is None:
        return
    cfg.mirror.mkdir(parents=True, exist_ok=True)
    for name in (f"{checkpoint_name(cfg)}.tar", "log.jsonl", "eval.json"):
        if (cfg.out / name).is_file():
            shutil.copyfile(cfg.out / name, cfg.mirror / name)


def resume_folder(cfg: TrainShapesConfig) -> Path:
    src = cfg.resume_from or cfg.out / checkpoint_name(cfg)
    if src.suffix == ".tar":
        dest = cfg.out / "resume"
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(src) as tar:
            tar.extractall(dest, filter="data")
        src = next(p for p in dest.iterdir() if p.is_dir())
    return src


def source_folder(cfg: TrainShapesConfig) -> Optional[Path]:
    """The folder the run starts from: the checkpoint with --resume, the epsilon prior --init-from (default the
    shipped one) for a new flow run, None for a new epsilon run (from scratch)."""
    from fsd_gs.prior.shapes import shapes_prior_folder

    if cfg.resume:
        return resume_folder(cfg)
    return (cfg.init_from or shapes_prior_folder()) if cfg.objective == "flow" else None


def start_summary(cfg: TrainShapesConfig, src: Path, summary: dict) -> dict:
    """The summary a run continues: ``summary`` of ``src``, or for a new flow run a fresh count that records the
    epsilon prior it started from."""
    if cfg.objective == "epsilon" or cfg.resume:
        return summary
    return {"step": 0, "segments": 0, "train_seconds": 0.0, "images_seen": 0, "init_from": {"folder": str(src), **summary}}


def load_for_resume(folder: Path, unet, text_encoder) -> tuple[Judge, dict]:
    from safetensors.torch import load_file

    unet_file, text_file = folder / "unet" / "diffusion_pytorch_model.safetensors", folder / "text_encoder" / "model.safetensors"
    unet.load_state_dict({k: v.float() for k, v in load_file(str(unet_file)).items()})
    text_encoder.load_state_dict({k: v.float() for k, v in load_file(str(text_file)).items()})
    judge = load_judge(folder / "judge").requires_grad_(True).train()
    judge.source = folder / "judge"  # a flow run copies these files into its checkpoint
    summary = json.loads((folder / "shapes.json").read_text())["training"]
    return judge, summary


# -- main -----------------------------------------------------------------------------------------
def train(cfg: TrainShapesConfig) -> dict:
    t_start = time.time()
    from fsd_gs.device import resolve_device

    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if cfg.tiny:
        cfg.batch_objects, cfg.views_per_object, cfg.bank_size, cfg.bank_refresh = 2, 2, 4, 1
        cfg.workers, cfg.log_every, cfg.warmup, cfg.save_every_s = 0, 1, 2, 1e9
    cfg.dataset.views_per_object = cfg.views_per_object
    cfg.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tok_dir = cfg.out / "tokenizer"
    src = source_folder(cfg)
    flow = cfg.objective == "flow"
    cfg.flow_shift = flow_shift_of(cfg, src) if flow else cfg.flow_shift
    token_ids = copy_tokenizer(src / "tokenizer", tok_dir) if src is not None else save_tokenizer(tok_dir)
    tokenizer = load_tokenizer(tok_dir)
    unet, text_encoder = build_networks(token_ids)
    judge = Judge()
    summary: dict = {"step": 0, "segments": 0, "train_seconds": 0.0, "images_seen": 0}
    if src is not None:
        judge, summary = load_for_resume(src, unet, text_encoder)
        summary = start_summary(cfg, src, summary)
        start = "resumed" if cfg.resume else f"started from {src}"
        print(f"{start} at step {summary['step']} (segment {summary['segments']})", flush=True)
    segment = int(summary["segments"])
    unet.to(device).train()
    text_encoder.to(device).train()
    judge.to(device).train(not flow)  # flow: the judge is copied, not trained
    ema_unet = copy.deepcopy(unet).float().requires_grad_(False).eval()
    ema_te = copy.deepcopy(text_encoder).float().requires_grad_(False).eval()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99), **fused)
    opt_judge = torch.optim.AdamW(judge.parameters(), lr=cfg.judge_lr, weight_decay=cfg.weight_decay, **fused)
    abar = training_alphas(device)
    net = flow_network(unet) if flow else unet  # flow: v = the converted epsilon UNet (as the flow folder loads it)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    data = ShapesDataset(cfg.dataset, device)
    bank, stream = start_bank(cfg.seed + 101 * segment, cfg.dataset.world, cfg.workers, cfg.bank_size, device)
    gen = torch.Generator().manual_seed(cfg.seed * 31 + segment)
    sizes = ", ".join(
        f"{name} {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M"
        for name, m in (("unet", unet), ("text", text_encoder), ("judge", judge))
    )
    print(f"device {device}; bank of {len(bank)} objects ready after {time.time() - t_start:.1f} s; {sizes} params", flush=True)

    step0 = int(summary["step"])
    step = step0
    warmup = cfg.warmup if step0 == 0 else max(1, cfg.warmup // 5)
    log = open(cfg.out / "log.jsonl", "a")
    last_save = time.time()
    t_run = time.time()
    acc = {"loss": 0.0, "judge": 0.0, "n": 0, "render_s": 0.0, "step_s": 0.0}
    while True:
        elapsed = time.time() - t_start
        if elapsed > cfg.time_budget_s or step >= cfg.steps:
            break
        t0 = time.time()
        for _ in range(cfg.bank_refresh):
            bank[int(torch.randint(len(bank), (), generator=gen))] = to_object(next(stream), device)
        pick = torch.randperm(len(bank), generator=gen)[: cfg.batch_objects].tolist()
        batch = data.render([bank[i] for i in pick], gen)
        t1 = time.time()
        x0 = batch.images * 2 - 1
        ids = tokenize(tokenizer, batch.captions).to(device)
        t = None if flow else torch.randint(0, len(abar), (x0.shape[0],), generator=gen).to(device)
        run_progress = (time.time() - t_run) / max(1.0, cfg.time_budget_s - (t_run - t_start))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg, cfg.lr, step0, warmup, run_progress)
        for group in opt_judge.param_groups:
            group["lr"] = lr_at(step, cfg, cfg.judge_lr, step0, warmup, run_progress)
        with autocast:
            emb = text_encoder(ids)[0]
        if t is None:
            loss = flow_loss(net, x0, sample_flow_times(x0.shape[0], gen, cfg.flow_times), emb, gen, autocast)
        else:
            loss = epsilon_loss(unet, x0, t, emb, abar, gen, cfg.min_snr_gamma, autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step - step0) / (10 + step - step0))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_te, text_encoder, decay)
        jloss = torch.zeros(()) if flow else judge_step(judge, opt_judge, batch, gen, autocast, device)
        step += 1
        acc["loss"] += loss.detach()
        acc["judge"] += jloss.detach()
        acc["n"] += 1
        acc["render_s"] += t1 - t0
        acc["step_s"] += time.time() - t0
        if step % cfg.log_every == 0:
            row = {
                "step": step,
                "loss": float(acc["loss"]) / acc["n"],
                "judge_loss": float(acc["judge"]) / acc["n"],
                "lr": opt.param_groups[0]["lr"],
                "render_ms": 1000 * acc["render_s"] / acc["n"],
                "step_ms": 1000 * acc["step_s"] / acc["n"],
                "elapsed_s": round(time.time() - t_start, 1),
            }
            print(json.dumps(row), flush=True)
            log.write(json.dumps(row) + "\n")
            log.flush()
            acc = {k: 0.0 for k in acc} | {"n": 0}
        if time.time() - last_save > cfg.save_every_s:
            _save(cfg, ema_unet, ema_te, judge, summary, step, segment, t_run, batch.images.shape[0] * (step - step0))
            last_save = time.time()
    images = cfg.batch_objects * cfg.views_per_object * (step - step0)
    final = _save(cfg, ema_unet, ema_te, judge, summary, step, segment, t_run, images)
    mib = folder_size(cfg.out / checkpoint_name(cfg)) / 2**20
    print(f"saved step {step} to {cfg.out / checkpoint_name(cfg)} ({mib:.1f} MiB)", flush=True)
    if cfg.export is not None:
        save_prior(cfg, cfg.export, ema_unet, ema_te, judge, final)
    result = {"summary": final}
    if cfg.eval_at_end:
        result["eval"] = evaluate(cfg, device)
    return result


def judge_step(judge, opt_judge, batch, gen: torch.Generator, autocast, device: torch.device) -> torch.Tensor:
    """One step of the judge (cross-entropy on kind, colour and view of augmented copies of the batch); its loss."""
    with autocast:
        logits = judge(augment_for_judge(batch.images, gen))
    labels = {"kind": batch.kind, "colour": batch.colour, "view": batch.view}
    jloss = sum(torch.nn.functional.cross_entropy(logits[k].float(), labels[k].to(device)) for k in labels)
    opt_judge.zero_grad(set_to_none=True)
    jloss.backward()
    opt_judge.step()
    return jloss


def run_summary(cfg: Any, summary: dict, step: int, segment: int, t_run: float, images: int) -> dict:
    """The summary saved with a checkpoint: ``summary`` (the one this run resumed from) after this run's segment
    ``segment`` reached ``step`` having seen ``images`` more images since ``t_run``, with the recipe (``cfg``'s fields
    but the dataset) and the caption settings."""
    return {
        **summary,
        "step": step,
        "segments": segment + 1,
        "train_seconds": round(float(summary.get("train_seconds", 0.0)) + time.time() - t_run, 1),
        "images_seen": int(summary.get("images_seen", 0)) + int(images),
        "recipe": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "dataset"},
        "captions": asdict(cfg.dataset.captions),
    }


def _save(cfg, ema_unet, ema_te, judge, summary, step, segment, t_run, images) -> dict:
    info = run_summary(cfg, summary, step, segment, t_run, images)
    judge.eval()
    save_checkpoint(cfg, ema_unet, ema_te, judge, info)
    judge.train(cfg.objective == "epsilon")
    return info


def evaluate(cfg: TrainShapesConfig, device: torch.device) -> dict:
    """The done-when checks on the saved folder (GPU-fast; on CPU use scripts/eval_shapes_prior.py)."""
    from fsd_gs.prior.shapes import load_shapes_prior
    from fsd_gs.shapes import evaluate as ev

    folder = cfg.out / checkpoint_name(cfg)
    prior = load_shapes_prior(device, folder=folder)
    judge = load_judge(folder / "judge", device)
    t0 = time.time()
    res = {
        "judge": ev.judge_accuracy(judge, n_objects=256, device=device),
        "prior": ev.prior_agreement(prior, judge, samples_per_prompt=cfg.eval_samples_per_prompt),
        "colour_free": ev.colour_entropy(prior, judge),
    }
    res["eval_seconds"] = round(time.time() - t0, 1)
    (cfg.out / "eval.json").write_text(json.dumps(res, indent=2) + "\n")
    mirror(cfg)
    short = {
        "judge": res["judge"],
        "prior_kind": res["prior"]["kind"],
        "prior_colour": res["prior"]["colour"],
        "prior_view": res["prior"]["view"],
        "colour_entropy_ratio": res["colour_free"]["entropy_ratio"],
    }
    print(json.dumps(short), flush=True)
    return res


def main(argv: list[str] | None = None) -> None:
    import tyro

    cfg = tyro.cli(TrainShapesConfig, args=argv)
    if cfg.tiny:
        cfg.dataset.resolution = 64
    train(cfg)


if __name__ == "__main__":
    sys.exit(main())
