"""Fine-tune the shipped shapes prior MVDream-style into the multi-view prior ``shapes-mv``.

    python scripts/train_shapes_mv.py --out runs/shapes_mv --time-budget-s 360 --check-at-end    # from the shipped
    python scripts/train_shapes_mv.py --out runs/shapes_mv --resume --time-budget-s 360          # go on
    python scripts/train_shapes_mv.py --out /tmp/mv --tiny --steps 2 --device cpu                 # CPU smoke test

The UNet of fsd_gs/assets/shapes_prior gets MVDream's camera embedding (zero output at the start, so it starts as
the shipped model) and cross-view self-attention over groups of 4 views (fsd_gs/prior/mvdream_shapes.py). Every
sample is one object of the shapes world seen from 4 cameras, as MVDream trains: a random start azimuth + 0/90/180/
270 deg, one random elevation (``--elevation-range``), distance and field of view per group
(:class:`~fsd_gs.prior.mvdream_cameras.MultiViewOrbitSampler`), with the shapes prior's training captions (view words
per view, colour / view / empty dropout) and one timestep per group. Only the UNet trains (AdamW, warm-up, cosine
over the run's time budget, min-SNR epsilon loss, bf16 autocast on CUDA); the text encoder, tokenizer and judge are
the shipped ones. The object bank and schedule are scripts/train_shapes_prior.py's functions, the loss
fsd_gs/shapes/objective.py's.

Checkpoint = the folder in the layout ``--model shapes-mv`` reads (fp16 EMA UNet, ~13 MiB), ``--out``/shapes_mv,
written every ``--save-every-s`` and at the end; ``--resume`` continues from it (the EMA becomes the weights, Adam
restarts with a short warm-up). ``--export fsd_gs/assets/shapes_mv`` copies the final folder into the package.
``--check-at-end`` runs the 4-view check (fsd_gs/prior/mvdream_check.py), writes check.json and samples.png.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling trainer, also when loaded from a test
import train_shapes_prior as base  # noqa: E402

from fsd_gs.camera import Cameras, orbit_cameras  # noqa: E402
from fsd_gs.prior.mvdream_cameras import MultiViewOrbitSampler, mvdream_camera_vectors  # noqa: E402
from fsd_gs.prior.mvdream_shapes import multiview_unet, save_shapes_mv  # noqa: E402
from fsd_gs.shapes.dataset import DatasetConfig, ShapesDataset  # noqa: E402
from fsd_gs.shapes.model import build_networks, copy_tokenizer, folder_size, load_tokenizer, tokenize  # noqa: E402
from fsd_gs.shapes.objective import epsilon_loss  # noqa: E402


@dataclass
class TrainShapesMVConfig:
    """Recipe of the multi-view shapes prior."""

    out: Path = Path("runs/shapes_mv")
    """Run folder: the checkpoint (shapes_mv/), log.jsonl, check.json, samples.png."""
    init_from: Optional[Path] = None
    """The text-to-image shapes prior folder to start from (default: the shipped fsd_gs/assets/shapes_prior)."""
    resume: bool = False
    """Continue from --out/shapes_mv instead of starting from --init-from."""
    export: Optional[Path] = None
    """Also copy the final folder here (e.g. fsd_gs/assets/shapes_mv)."""
    seed: int = 0
    """Seed of the camera embedding's initialisation and of the data (each resumed run adds its segment number)."""
    device: str = "auto"
    """auto | cuda | cpu."""
    steps: int = 100_000
    """Stop after this many steps in all (a run stops earlier at its time budget)."""
    time_budget_s: float = 1e9
    """Stop (and save) after this many seconds of this run, start-up included."""
    save_every_s: float = 60.0
    """Save the checkpoint this often (seconds)."""
    batch_objects: int = 96
    """Objects (groups of ``views_per_group`` views) per step."""
    views_per_group: int = 4
    """Views of one object per sample, attending to each other (MVDream: 4, 90 deg apart)."""
    elevation_range: tuple[float, float] = (-10.0, 80.0)
    """Elevation (degrees) of a group's cameras, one per group (the shapes world's camera range)."""
    bank_size: int = 1536
    """Objects kept on the device; ``bank_refresh`` of them are replaced every step."""
    bank_refresh: int = 24
    """New objects per step (from the worker processes)."""
    workers: int = 10
    """Processes building objects (0 = in the main process)."""
    lr: float = 1e-4
    """Peak learning rate of the UNet (AdamW)."""
    lr_final: float = 1e-5
    """Learning rate at the end of the run."""
    warmup: int = 100
    """Warm-up steps at the start (and 1/5 of it after a resume)."""
    decay_over_run: bool = True
    """Anneal the learning rate over THIS run's time budget (False: over ``steps``)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    ema_decay: float = 0.995
    """EMA decay of the saved weights (ramped up as (1 + n) / (10 + n) in a run's first steps)."""
    min_snr_gamma: float = 5.0
    """Min-SNR loss weighting (0 = plain MSE)."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    check_at_end: bool = False
    """Run the 4-view check on the saved folder and write check.json and samples.png."""
    check_groups_per_kind: int = 8
    """Groups of 4 views per front kind in the end-of-run check."""
    tiny: bool = False
    """CPU smoke test: 2 objects, a bank of 4, 64 px renders, no workers (not for shipping)."""
    log_every: int = 25
    """Print/log every this many steps."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    """Data: resolution, backgrounds, world and caption settings (views_per_object is ``views_per_group``)."""


class GroupedShapesDataset(ShapesDataset):
    """:class:`ShapesDataset` whose views of an object are one MVDream group: start azimuth + k * 360 / F, one
    elevation / distance / fov per object (consecutive in the batch)."""

    def __init__(self, config: DatasetConfig, device: torch.device, elevation_range: tuple[float, float]) -> None:
        super().__init__(config, device)
        self.camera_config = replace(self.camera_config, elevation_range=tuple(elevation_range))

    def cameras(self, n_objects: int, generator: torch.Generator) -> Cameras:
        views = self.config.views_per_object
        sampler = MultiViewOrbitSampler(replace(self.camera_config, batch_size=n_objects * views), views, self.device)
        return sampler.sample(generator)


def camera_labels(azimuth: torch.Tensor, elevation: torch.Tensor, device: torch.device) -> torch.Tensor:
    """MVDream's camera vectors [B,16] of orbit views at ``azimuth``/``elevation`` [B] (degrees), on ``device``: the
    vectors depend on the direction only (MVDream normalises the translation), so distance and fov are placeholders."""
    n = azimuth.shape[0]
    cams = orbit_cameras(azimuth, elevation, torch.full((n,), 2.5), torch.full((n,), 50.0), 64, 64)
    return mvdream_camera_vectors(cams).to(device)


def build(cfg: TrainShapesMVConfig, tok_dir: Path):
    """(multi-view UNet, text encoder, judge, summary, tokenizer) from the start folder or the checkpoint."""
    from fsd_gs.prior.shapes import shapes_prior_folder

    src = cfg.out / "shapes_mv" if cfg.resume else (cfg.init_from or shapes_prior_folder())
    token_ids = copy_tokenizer(src / "tokenizer", tok_dir)
    unet, text_encoder = build_networks(token_ids)
    if cfg.resume:
        unet = multiview_unet(unet, cfg.views_per_group)
        judge, summary = base.load_for_resume(src, unet, text_encoder)
    else:
        judge, start = base.load_for_resume(src, unet, text_encoder)
        unet = multiview_unet(unet, cfg.views_per_group)
        summary = {
            "step": 0,
            "segments": 0,
            "train_seconds": 0.0,
            "images_seen": 0,
            "init_from": str(src),
            "init_step": int(start.get("step", 0)),
        }
    return unet, text_encoder.requires_grad_(False).eval(), judge.requires_grad_(False).eval(), summary, load_tokenizer(tok_dir)


def save(cfg: TrainShapesMVConfig, ema_unet, text_encoder, judge, summary: dict, step: int, images: int, t_run: float) -> dict:
    """Write --out/shapes_mv (fp16) with the training summary; returns the summary."""
    info = {**base.run_summary(cfg, summary, step, int(summary["segments"]), t_run, images), "multiview": True}
    save_shapes_mv(cfg.out / "shapes_mv", ema_unet, text_encoder, judge, info, tokenizer=cfg.out / "tokenizer")
    return info


def train(cfg: TrainShapesMVConfig) -> dict:
    """One run (to the time budget or ``steps``); returns {"summary", "losses", and "check" with --check-at-end}."""
    t_start = time.time()
    from fsd_gs.device import resolve_device

    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.tiny:
        cfg.batch_objects, cfg.bank_size, cfg.bank_refresh, cfg.workers = 2, 4, 1, 0
        cfg.log_every, cfg.warmup, cfg.save_every_s, cfg.check_groups_per_kind = 1, 2, 1e9, 1
    cfg.dataset.views_per_object = cfg.views_per_group
    cfg.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    unet, text_encoder, judge, summary, tokenizer = build(cfg, cfg.out / "tokenizer")
    segment, step0 = int(summary["segments"]), int(summary["step"])
    if cfg.resume:
        print(f"resumed at step {step0} (segment {segment})", flush=True)
    unet.to(device).train()
    text_encoder.to(device)
    ema_unet = copy.deepcopy(unet).float().requires_grad_(False).eval()
    params = list(unet.parameters())
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99), **fused)
    abar = base.training_alphas(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    data = GroupedShapesDataset(cfg.dataset, device, cfg.elevation_range)
    bank, stream = base.start_bank(cfg.seed + 101 * segment, cfg.dataset.world, cfg.workers, cfg.bank_size, device)
    gen = torch.Generator().manual_seed(cfg.seed * 31 + segment)
    print(
        f"device {device}; bank of {len(bank)} objects ready after {time.time() - t_start:.1f} s; "
        f"unet {sum(p.numel() for p in params) / 1e6:.2f}M params",
        flush=True,
    )
    step, f = step0, cfg.views_per_group
    warmup = cfg.warmup if step0 == 0 else max(1, cfg.warmup // 5)
    losses: list[float] = []
    t_run = last_save = time.time()
    acc: torch.Tensor | float = 0.0
    n_acc = 0
    with open(cfg.out / "log.jsonl", "a") as log:
        while time.time() - t_start <= cfg.time_budget_s and step < cfg.steps:
            for _ in range(cfg.bank_refresh):
                bank[int(torch.randint(len(bank), (), generator=gen))] = base.to_object(next(stream), device)
            pick = torch.randperm(len(bank), generator=gen)[: cfg.batch_objects].tolist()
            batch = data.render([bank[i] for i in pick], gen)
            x0 = batch.images * 2 - 1
            with torch.no_grad(), autocast:
                emb = text_encoder(tokenize(tokenizer, batch.captions).to(device))[0]
            t = torch.randint(0, len(abar), (len(pick),), generator=gen).repeat_interleave(f).to(device)  # one t per group
            labels = camera_labels(batch.azimuth, batch.elevation, device)
            progress = (time.time() - t_run) / max(1.0, cfg.time_budget_s - (t_run - t_start))
            for group in opt.param_groups:
                group["lr"] = base.lr_at(step, cfg, cfg.lr, step0, warmup, progress)  # type: ignore[arg-type]
            loss = epsilon_loss(unet, x0, t, emb, abar, gen, cfg.min_snr_gamma, autocast, class_labels=labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            base.ema_update(ema_unet, unet, min(cfg.ema_decay, (1 + step - step0) / (10 + step - step0)))
            step += 1
            acc, n_acc = acc + loss.detach(), n_acc + 1
            if step % cfg.log_every == 0:
                row = {
                    "step": step,
                    "loss": float(acc) / n_acc,
                    "lr": opt.param_groups[0]["lr"],
                    "elapsed_s": round(time.time() - t_start, 1),
                }
                losses.append(row["loss"])
                print(json.dumps(row), flush=True)
                log.write(json.dumps(row) + "\n")
                log.flush()
                acc, n_acc = 0.0, 0
            if time.time() - last_save > cfg.save_every_s:
                save(cfg, ema_unet, text_encoder, judge, summary, step, len(pick) * f * (step - step0), t_run)
                last_save = time.time()
    final = save(cfg, ema_unet, text_encoder, judge, summary, step, cfg.batch_objects * f * (step - step0), t_run)
    folder = cfg.out / "shapes_mv"
    print(f"saved step {step} to {folder} ({folder_size(folder) / 2**20:.1f} MiB)", flush=True)
    if cfg.export is not None:
        shutil.copytree(folder, cfg.export, dirs_exist_ok=True)
    result: dict = {"summary": final, "losses": losses}
    if cfg.check_at_end:
        result["check"] = check(cfg, device)
    return result


def check(cfg: TrainShapesMVConfig, device: torch.device) -> dict:
    """The 4-view check (fsd_gs/prior/mvdream_check.py) of the saved folder, with the camera only and with view prompts
    too, and of the text-to-image shapes prior it started from (view prompts: its only view cue) as the baseline;
    writes check.json and samples.png (shapes-mv, camera only), prints the numbers."""
    from fsd_gs.prior.mvdream_check import CHECK_KINDS, four_view_check, save_sample_grid
    from fsd_gs.prior.shapes import load_shapes_mv_prior, load_shapes_prior
    from fsd_gs.shapes.judge import load_judge

    judge = load_judge(device=device)
    mv = load_shapes_mv_prior(device, folder=cfg.out / "shapes_mv")
    options = dict(
        groups_per_kind=cfg.check_groups_per_kind,
        kinds=("chair", "house") if cfg.tiny else CHECK_KINDS,
        steps=2 if cfg.tiny else 50,
    )
    runs = {
        "shapes_mv_camera_only": (mv, False),
        "shapes_mv_with_view_prompts": (mv, True),
        "shapes_prior_with_view_prompts": (None, True),
    }
    res = {}
    for name, (prior, view_prompts) in runs.items():
        prior = prior or load_shapes_prior(device, folder=cfg.init_from)
        out = four_view_check(prior, judge, view_prompts=view_prompts, **options)  # type: ignore[arg-type]
        res[name] = out.summary()
        if name == "shapes_mv_camera_only":
            save_sample_grid(out.images, cfg.out / "samples.png")
    (cfg.out / "check.json").write_text(json.dumps(res, indent=2) + "\n")
    print(
        json.dumps(
            {k: {m: round(v[m], 3) for m in ("view_accuracy", "janus", "kind_accuracy", "consistent")} for k, v in res.items()}
        ),
        flush=True,
    )
    return res


def main(argv: list[str] | None = None) -> int:
    import tyro

    cfg = tyro.cli(TrainShapesMVConfig, args=argv)
    if cfg.tiny:
        cfg.dataset.resolution = 64
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
