"""The checks of the built-in prior (issue 7's "done when"), shared by scripts/eval_shapes_prior.py and the
end of scripts/train_shapes_prior.py.

* :func:`judge_accuracy`: the judge on fresh renders from an unseen seed.
* :func:`prior_agreement`: 50-step samples of the prior's own sampler (DDIM; Euler for the flow prior shapes-flow)
  for prompts drawn at random (seeded, not hand-picked) from all (kind, colour, view) triples; the judge's agreement
  with each prompt's kind and colour.
* :func:`colour_entropy`: for colour-free prompts ("a mushroom"), the entropy of the judge's colours over
  many samples, as a fraction of log(number of colours).
* :func:`cfg_sweep`: both of the above over a list of CFG scales, every kind colour-free, to choose the
  presets' CFG from data.
* :func:`unet_latency`: one guided UNet evaluation (batch 2) at 64x64 on the current device.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from fsd_gs.camera import VIEW_NAMES
from fsd_gs.prior.base import DiffusionPrior
from fsd_gs.shapes.captions import article
from fsd_gs.shapes.dataset import DatasetConfig, ShapesDataset
from fsd_gs.shapes.judge import Judge
from fsd_gs.shapes.world import COLOUR_NAMES, KINDS


def judge_accuracy(
    judge: Judge, n_objects: int = 64, seed: int = 987_654, device: torch.device | str = "cpu", views_per_object: int = 4
) -> dict[str, float]:
    """Accuracy (fractions) of kind, colour and view on ``n_objects`` x ``views_per_object`` fresh renders."""
    data = ShapesDataset(DatasetConfig(views_per_object=views_per_object), device)
    gen = torch.Generator().manual_seed(seed)
    correct = {"kind": 0, "colour": 0, "view": 0}
    total = 0
    for start in range(0, n_objects, 32):
        batch = data.sample(min(32, n_objects - start), gen)
        pred = judge.predict(batch.images)
        for key in correct:
            correct[key] += int((pred[key] == getattr(batch, key)).sum())
        total += len(batch.captions)
    return {key: val / total for key, val in correct.items()} | {"n_images": total}


def random_prompts(n: int = 24, seed: int = 2024) -> list[tuple[str, str, str]]:
    """``n`` distinct (kind, colour, view) triples drawn uniformly at random with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    triples = [(k, c, v) for k in KINDS for c in COLOUR_NAMES for v in VIEW_NAMES]
    order = torch.randperm(len(triples), generator=gen)[:n]
    return [triples[i] for i in order.tolist()]


@torch.no_grad()
def ddim_sample(
    prior: DiffusionPrior, prompt: str, views: list[str], guidance_scale: float, steps: int, generator: torch.Generator
) -> torch.Tensor:
    """The prior's samples [B,3,64,64] in [0,1] of ``prompt`` with one view suffix per sample (fsd_gs.sampling.sample:
    DDIM, eta 0, for diffusion priors; Euler for flow priors)."""
    from fsd_gs.sampling import sample

    emb = prior.encode_prompts(prompt, "", view_dependent=True)
    conditioning = emb.select(views)
    c, h, w = prior.model_shape(prior.resolution, prior.resolution)
    x = torch.randn(len(views), c, h, w, generator=generator)
    return prior.decode(sample(prior, x, conditioning, guidance_scale, steps))


def _entropy(counts: torch.Tensor) -> float:
    p = counts.float() / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def prior_agreement(
    prior: DiffusionPrior,
    judge: Judge,
    n_prompts: int = 24,
    samples_per_prompt: int = 8,
    guidance_scale: float = 2.5,
    steps: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Judge agreement with random (kind, colour, view) prompts; per-prompt rows and totals."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for kind, colour, view in random_prompts(n_prompts):
        prompt = f"{article(colour)} {colour} {kind}"
        images = ddim_sample(prior, prompt, [view] * samples_per_prompt, guidance_scale, steps, gen)
        pred = judge.predict(images)
        rows.append(
            {
                "prompt": f"{prompt}, {view} view",
                "kind": float((pred["kind"] == KINDS.index(kind)).float().mean()),
                "colour": float((pred["colour"] == COLOUR_NAMES.index(colour)).float().mean()),
                "view": float((pred["view"] == VIEW_NAMES.index(view)).float().mean()),
            }
        )
    total = {key: sum(r[key] for r in rows) / len(rows) for key in ("kind", "colour", "view")}
    return {"rows": rows, **total, "samples_per_prompt": samples_per_prompt, "guidance_scale": guidance_scale, "steps": steps}


def colour_entropy(
    prior: DiffusionPrior,
    judge: Judge,
    kinds: tuple[str, ...] | None = None,
    n_samples: int = 64,
    guidance_scale: float = 2.5,
    steps: int = 50,
    seed: int = 1,
    batch: int = 64,
    n_kinds: int = 3,
) -> dict[str, Any]:
    """Entropy of the judge's colour over ``n_samples`` samples of "a {kind}" (random views), / log(#colours).

    ``kinds`` default: ``n_kinds`` kinds drawn at random with ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    kinds = kinds or tuple(KINDS[i] for i in torch.randperm(len(KINDS), generator=gen)[:n_kinds].tolist())
    rows = []
    for kind in kinds:
        counts = torch.zeros(len(COLOUR_NAMES), dtype=torch.long)
        kind_ok = 0
        for start in range(0, n_samples, batch):
            m = min(batch, n_samples - start)
            views = [VIEW_NAMES[i] for i in torch.randint(len(VIEW_NAMES), (m,), generator=gen).tolist()]
            pred = judge.predict(ddim_sample(prior, f"{article(kind)} {kind}", views, guidance_scale, steps, gen))
            counts += torch.bincount(pred["colour"], minlength=len(COLOUR_NAMES))
            kind_ok += int((pred["kind"] == KINDS.index(kind)).sum())
        rows.append(
            {
                "prompt": f"{article(kind)} {kind}",
                "entropy_ratio": _entropy(counts) / math.log(len(COLOUR_NAMES)),
                "kind": kind_ok / n_samples,
                "colours": dict(zip(COLOUR_NAMES, counts.tolist())),
            }
        )
    return {"rows": rows, "entropy_ratio": min(r["entropy_ratio"] for r in rows), "n_samples": n_samples}


def cfg_sweep(
    prior: DiffusionPrior,
    judge: Judge,
    scales: tuple[float, ...],
    n_samples: int = 16,
    n_prompts: int = 24,
    samples_per_prompt: int = 2,
    steps: int = 50,
    seed: int = 1,
) -> list[dict[str, Any]]:
    """For each CFG scale: colour-free kind agreement and colour entropy over every kind (``n_samples`` each), and
    agreement on ``n_prompts`` random (kind, colour, view) prompts. The same seeds at every scale.

    Returns one row per scale: ``guidance_scale``, ``kind`` (mean over kinds of the colour-free kind agreement),
    ``kind_min``, ``entropy_ratio`` (mean) and ``entropy_min``, ``prompt_kind``, ``prompt_colour`` and the
    colour-free ``rows`` (per kind).
    """
    out = []
    for scale in scales:
        free = colour_entropy(prior, judge, kinds=KINDS, n_samples=n_samples, guidance_scale=scale, steps=steps, seed=seed)
        named = prior_agreement(
            prior, judge, n_prompts=n_prompts, samples_per_prompt=samples_per_prompt, guidance_scale=scale, steps=steps, seed=seed
        )
        rows = free["rows"]
        out.append(
            {
                "guidance_scale": scale,
                "kind": sum(r["kind"] for r in rows) / len(rows),
                "kind_min": min(r["kind"] for r in rows),
                "entropy_ratio": sum(r["entropy_ratio"] for r in rows) / len(rows),
                "entropy_min": free["entropy_ratio"],
                "prompt_kind": named["kind"],
                "prompt_colour": named["colour"],
                "rows": rows,
            }
        )
    return out


@torch.no_grad()
def unet_latency(prior: DiffusionPrior, repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Seconds of one guided noise prediction (batch 2 = cond + uncond of one image) at the prior's resolution."""
    emb = prior.encode_prompts("a red mushroom", "")
    conditioning = emb.select(["front"])
    c, h, w = prior.model_shape(prior.resolution, prior.resolution)
    z = torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(0)).to(prior.device)
    t = torch.tensor([500], device=prior.device)
    times = []
    for i in range(warmup + repeats):
        if prior.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        prior.predict(z, t, conditioning, 7.5)
        if prior.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    return {"median_s": times[len(times) // 2], "min_s": times[0], "threads": torch.get_num_threads()}


@torch.no_grad()
def turntable_agreement(
    gaussians: Any,
    prompt: str,
    judge: Judge,
    n_views: int = 24,
    elevation: float = 15.0,
    fovy: float = 50.0,
    background: float = 1.0,
) -> dict[str, Any]:
    """Render ``n_views`` turntable views (64 px, distance 2.5) of a distilled asset and let the judge read them.

    Returns the share of views whose judged kind / colour / both match the kind and colour named in ``prompt``, the
    view read of each camera and, for front kinds, the view accuracy on the clear cameras and the Janus flag
    (:mod:`fsd_gs.evaluate.consistency`; None otherwise).
    """
    from fsd_gs.camera import turntable
    from fsd_gs.evaluate.consistency import consistency, has_front
    from fsd_gs.render import render
    from fsd_gs.shapes.captions import parse

    kind, colour, _ = parse(prompt)
    cams = turntable(n_views, elevation=elevation, distance=2.5, fovy=fovy, width=64, height=64, device=gaussians.device)
    images = render(gaussians, cams, torch.full((3,), background, device=gaussians.device)).rgb.permute(0, 3, 1, 2)
    pred = judge.predict(images)
    reads = [VIEW_NAMES[v] for v in pred["view"].tolist()]
    c = consistency(reads, cams.azimuth.tolist()) if has_front(prompt, "shapes") else None
    kind_ok = pred["kind"] == KINDS.index(kind) if kind else torch.ones(n_views, dtype=torch.bool)
    colour_ok = pred["colour"] == COLOUR_NAMES.index(colour) if colour else torch.ones(n_views, dtype=torch.bool)
    return {
        "prompt": prompt,
        "kind": float(kind_ok.float().mean()),
        "colour": float(colour_ok.float().mean()),
        "both": float((kind_ok & colour_ok).float().mean()),
        "n_views": n_views,
        "judged": [(KINDS[k], COLOUR_NAMES[c]) for k, c in zip(pred["kind"].tolist(), pred["colour"].tolist())],
        "views": reads,
        "view_accuracy": c.view_accuracy if c else None,
        "janus": c.janus if c else None,
    }


@torch.no_grad()
def world_view_consistency(
    judge: Judge, kinds: tuple[str, ...] | None = None, objects_per_kind: int = 8, seed_offset: int = 10_000, views: int = 24
) -> dict[str, Any]:
    """The judge's view head on the world's own objects of every front kind, from the evaluation cameras
    (:class:`fsd_gs.evaluate.views.ViewConfig`: ``views`` turntable views at elevation 15, 64 px, white background).

    Returns per kind and over all: view accuracy on the clear cameras (0/90/180/270 deg should read
    front/side/back/side), the Janus rate (share of objects whose 180-deg camera reads "front") and the
    kind and colour accuracy over all views; ``confusion`` counts (expected view, read view) over all kinds."""
    from fsd_gs.evaluate.consistency import add_confusion, consistency, empty_confusion
    from fsd_gs.evaluate.views import ViewConfig, eval_cameras, render_views, world_object
    from fsd_gs.shapes.world import FRONT_KINDS

    view_cfg = ViewConfig(views=views)
    param = next(judge.parameters())
    cams = eval_cameras(view_cfg, 64, param.device)
    azimuths = cams.azimuth.tolist()
    per_kind: dict[str, dict[str, float]] = {}
    confusion = empty_confusion()
    for kind in kinds or FRONT_KINDS:
        acc, janus, kind_ok, colour_ok = [], [], [], []
        for i in range(objects_per_kind):
            obj, colour = world_object(f"a {kind}", i, seed_offset)
            pred = judge.predict(render_views(obj.to(param.device), cams, view_cfg.background))
            c = consistency([VIEW_NAMES[v] for v in pred["view"].tolist()], azimuths)
            add_confusion(confusion, c.confusion)
            acc.append(c.view_accuracy)
            janus.append(float(c.janus))
            kind_ok.append(float((pred["kind"] == KINDS.index(kind)).float().mean()))
            colour_ok.append(float((pred["colour"] == COLOUR_NAMES.index(colour)).float().mean()))
        per_kind[kind] = {
            "view_accuracy": sum(acc) / len(acc),
            "janus": sum(janus) / len(janus),
            "kind": sum(kind_ok) / len(kind_ok),
            "colour": sum(colour_ok) / len(colour_ok),
        }
    overall = {
        key: sum(row[key] for row in per_kind.values()) / len(per_kind) for key in ("view_accuracy", "janus", "kind", "colour")
    }
    return {
        "per_kind": per_kind,
        "overall": overall,
        "confusion": confusion,
        "objects_per_kind": objects_per_kind,
        "views": views,
        "seed_offset": seed_offset,
    }
