"""The evaluation as one function: find runs -> render fixed views -> score -> figures -> table, JSON, gallery.

result = evaluate(EvaluateConfig(paths=(Path("outputs/bench/manifest.json"),)))
result.folder  # evaluation.json, evaluation.md, gallery/index.html
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import tyro

from fsd_gs.camera import Cameras
from fsd_gs.errors import UserError, require
from fsd_gs.evaluate import gallery
from fsd_gs.evaluate.report import SetResult, markdown, summarise_set, to_json
from fsd_gs.evaluate.runs import Found, Run, find_runs, group_runs, shared_guidance
from fsd_gs.evaluate.scorers import DEFAULT_CLIP, ClipScorer, InceptionClassifier, JudgeScorer, Scorer, ViewScores, load_clip
from fsd_gs.evaluate.views import ViewConfig, ddim_images, eval_cameras, render_views, world_object
from fsd_gs.prior.detectors import is_shapes_world
from fsd_gs.run_dir import slugify
from fsd_gs.step import cpu_threads

OUTPUT_NAMES = ("evaluation.json", "evaluation.md", "gallery")


@dataclass
class EvaluateConfig:
    """Measure what FSD promises (docs/fsd.md sec. 7, 9): quality, IS and CROSS-FID per prompt and method, and 3D
    consistency (view accuracy, Janus rate; docs/evaluation.md), the paper's table (evaluation.md, evaluation.json) and
    an HTML gallery of turntables (gallery/index.html).

    python -m fsd_gs.evaluate outputs/benchmark/manifest.json

    python -m fsd_gs.evaluate outputs/ --view.views 24 --out results/eval
    """

    paths: tyro.conf.Positional[tuple[Path, ...]] = ()
    """Run folders, folders searched recursively for run folders (config.yaml + model.ply), or batch manifest.json files."""
    out: Optional[Path] = None
    """Output folder (must not hold evaluation results already). Default: a fresh evaluation-<date-time>/ next to the
    manifest, or inside the first PATH."""
    view: ViewConfig = field(default_factory=ViewConfig)
    """The fixed cameras every asset is rendered from."""
    size: Optional[int] = None
    """Rendered view size in pixels; None: 64 for the shapes prior (its judge's input), 256 otherwise."""
    clip: str = DEFAULT_CLIP
    """CLIP model for the quality and features of non-shapes backbones: a hub id (HF cache first) or a local folder."""
    is_classifier: Literal["auto", "inception", "none"] = "auto"
    """IS classifier: auto = the judge's kind head for shapes, Inception-v3 (torchmetrics + torch-fidelity) otherwise;
    none = no IS for non-shapes backbones."""
    truth: bool = True
    """Shapes prior: also score the shapes world's own objects of each prompt (the truth row, and the reference of the
    3D consistency figures: it must read ~1.00 view accuracy / 0% Janus). Cheap: rendering them costs what rendering
    the runs does (0.1 s per object for 24 views at 64 px on one CPU thread)."""
    truth_objects: Optional[int] = None
    """World objects per prompt; None: as many as the most seeds of any method of that prompt."""
    ddim_samples: int = 0
    """The prior's own DDIM samples per prompt (the paper's "DDIM images" row); 0 = no DDIM row. Off by default: it
    dominates the cost (8 samples x 50 steps of the 64 px shapes prior: ~55 s per prompt on one CPU thread, against
    ~1 s to render and score 4 assets); pass 8 for the paper's row (the diversity benchmark does)."""
    ddim_steps: int = 50
    """DDIM steps of those samples."""
    ddim_guidance: Optional[float] = None
    """CFG scale of the DDIM samples; None: the runs' own guidance scale (what FSD distils towards)."""
    device: str = "auto"
    """auto (CUDA if available), cpu, cuda or cuda:N. CUDA renders with gsplat, the CPU with the reference rasterizer."""
    gallery: bool = True
    """Write gallery/index.html with animated turntables."""
    frame_ms: int = 80
    """Milliseconds per turntable frame in the gallery."""
    progress: bool = True
    """Show progress over the assets as the train command does: a bar on a terminal, a plain line every 5% (with ETA)
    otherwise."""
    threads: int = 1
    """CPU only: torch threads for rendering and scoring (as train's --threads; 0 = leave torch's own setting)."""

    def validate(self) -> None:
        require(len(self.paths) > 0, "no PATH given: pass run folders, a folder of runs or a batch manifest.json")
        require(self.view.views >= 2, f"--view.views must be >= 2, got {self.view.views}")
        require(self.size is None or self.size >= 8, f"--size must be >= 8 pixels, got {self.size}")
        require(self.ddim_samples >= 0 and self.ddim_steps >= 1, "--ddim-samples must be >= 0 and --ddim-steps >= 1")
        require(self.truth_objects is None or self.truth_objects >= 1, "--truth-objects must be >= 1")
        require(self.frame_ms >= 10, "--frame-ms must be >= 10")
        require(self.threads >= 0, f"--threads must be >= 0, got {self.threads}")


@dataclass
class Evaluation:
    folder: Path
    results: list[SetResult]
    missing: list[dict[str, str]]
    data: dict[str, Any]


def output_folder(cfg: EvaluateConfig, found: Found) -> Path:
    """--out (refusing one that already holds results), else a fresh evaluation-<date-time>[-k] folder."""
    if cfg.out is not None:
        taken = [n for n in OUTPUT_NAMES if (cfg.out / n).exists()]
        require(not taken, f"{cfg.out} already holds {', '.join(taken)}: pass a fresh --out folder")
        cfg.out.mkdir(parents=True, exist_ok=True)
        return cfg.out
    first = Path(cfg.paths[0])
    base = first.parent if first.is_file() else first
    stem = f"evaluation-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    for k in range(1000):
        candidate = base / (stem if k == 0 else f"{stem}-{k}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"cannot create {candidate} ({exc.strerror}): pass a writable --out folder") from exc
    raise UserError(f"too many evaluation folders in {base}: pass --out")


class _Scorers:
    """One scorer per backbone, built on first use (the judge for shapes, CLIP for the rest)."""

    def __init__(self, cfg: EvaluateConfig, device: torch.device) -> None:
        self.cfg, self.device, self.cache = cfg, device, {}
        self._clip: Optional[ClipScorer] = None

    def get(self, model: str) -> Scorer:
        if model not in self.cache:
            self.cache[model] = self._judge() if is_shapes_world(model) else self._clip_scorer()
        return self.cache[model]

    def _judge(self) -> Scorer:
        from fsd_gs.shapes.judge import load_judge

        return JudgeScorer(load_judge(device=self.device))

    def _clip_scorer(self) -> Scorer:
        if self._clip is None:
            model, processor = load_clip(self.cfg.clip, self.device)
            classifier = InceptionClassifier(self.device) if self.cfg.is_classifier in ("auto", "inception") else None
            self._clip = ClipScorer(model, processor, self.cfg.clip, classifier, getattr(classifier, "name", None))
        return self._clip


class _Counter:
    """The train command's progress (fsd_gs.progress) counting assets: call :meth:`done` after each one."""

    def __init__(self, total: int, enabled: bool) -> None:
        from fsd_gs.progress import Progress

        self.progress, self.count = Progress(total, 0, enabled, "evaluate: ", unit="asset"), 0

    def done(self) -> None:
        self.count += 1
        self.progress.update(self.count, {})

    def close(self) -> None:
        self.progress.close()


def _score_set(
    cfg: EvaluateConfig,
    scorer: Scorer,
    prompt: str,
    model: str,
    n_colours: int,
    gallery_dir: Path,
    slug: str,
    results: list[SetResult],
    azimuths: list[float],
    method: str,
    views_by_seed: dict[int, torch.Tensor],
    sources: dict[int, str],
    still: bool = False,
    with_cross_fid: bool = True,
    guidance_scale: Optional[float] = None,
) -> None:
    """Score the views [V,3,H,W] of each seed (turntable views at ``azimuths``, or single stills: no consistency),
    append the figures to ``results`` and write the gallery cells."""
    scores: dict[int, ViewScores] = {s: scorer.score(v, prompt) for s, v in views_by_seed.items()}
    result = summarise_set(
        prompt, model, method, scores, n_colours, with_cross_fid, sources, guidance_scale, azimuths=None if still else azimuths
    )
    if cfg.gallery:
        for s, v in views_by_seed.items():
            name = gallery.media_name(slug, method, s, still)
            if still:
                gallery.save_still(v[0], gallery_dir / name)
            else:
                gallery.save_animation(v, gallery_dir / name, cfg.frame_ms)
            result.media[s] = name
    results.append(result)


def ddim_guidance(cfg: EvaluateConfig, methods: dict[str, dict[int, Run]]) -> float:
    """The DDIM row's CFG scale: --ddim-guidance, else the FSD runs' (what FSD distils towards), else the first
    method's. Methods may distil at different scales (SDS needs a higher one for the same quality)."""
    if cfg.ddim_guidance:
        return cfg.ddim_guidance
    fsd = [name for name in methods if name.split("-")[0] == "fsd"]  # fsd, fsd-perpneg, fsd-surface, ...
    runs = methods[min(fsd, key=len)] if fsd else next(iter(methods.values()))
    return next(iter(runs.values())).guidance_scale


@dataclass
class _Session:
    """What the evaluation of every prompt shares: settings, device, scorers, the gallery folder, the progress
    counter, the priors loaded for DDIM samples (by backbone) and the results so far (appended to)."""

    cfg: EvaluateConfig
    device: torch.device
    scorers: _Scorers
    gallery_dir: Path
    bar: _Counter
    results: list[SetResult] = field(default_factory=list)
    priors: dict[str, Any] = field(default_factory=dict)


def _by_prompt(groups: dict[tuple[str, str, str], dict[int, Run]]) -> dict[tuple[str, str], dict[str, dict[int, Run]]]:
    """(prompt, method, model) -> seeds regrouped as (prompt, model) -> method -> seeds."""
    prompts: dict[tuple[str, str], dict[str, dict[int, Run]]] = {}
    for (prompt, method, model), seeds in groups.items():
        prompts.setdefault((prompt, model), {})[method] = seeds
    return prompts


def _truth_counts(cfg: EvaluateConfig, prompts: dict[tuple[str, str], dict[str, dict[int, Run]]]) -> dict[tuple[str, str], int]:
    """World objects to score per (prompt, model): --truth-objects, else the most seeds of any method; 0 off shapes."""
    return {
        key: (cfg.truth_objects or max(len(s) for s in methods.values())) if is_shapes_world(key[1]) and cfg.truth else 0
        for key, methods in prompts.items()
    }


def _render_runs(session: _Session, runs: dict[int, Run], cams: Cameras) -> dict[int, torch.Tensor]:
    """Each seed's model.ply rendered from the evaluation cameras: seed -> views [V,3,H,W]."""
    from fsd_gs.io.ply import read_ply

    views = {}
    for seed, run in runs.items():
        views[seed] = render_views(read_ply(run.run_dir / "model.ply").to(session.device), cams, session.cfg.view.background)
        session.bar.done()
    return views


def _render_truth(
    session: _Session, prompt: str, n_objects: int, cams: Cameras
) -> tuple[dict[int, torch.Tensor], dict[int, str]]:
    """The shapes world's own objects of the prompt's kind, rendered: index -> views [V,3,H,W], and their sources."""
    views, sources = {}, {}
    for i in range(n_objects):
        obj, colour = world_object(prompt, i)
        views[i] = render_views(obj.to(session.device), cams, session.cfg.view.background)
        sources[i] = f"shapes world object {i} ({colour})"
        session.bar.done()
    return views, sources


def _score_ddim(
    session: _Session, scored: functools.partial, prompt: str, model: str, methods: dict[str, dict[int, Run]], cams: Cameras
) -> None:
    """Sample the prior's own DDIM images of the prompt (loading the prior once per backbone) and score them as stills."""
    from fsd_gs.prior.factory import load_prior

    cfg = session.cfg
    guidance = ddim_guidance(cfg, methods)
    if model not in session.priors:
        session.priors[model] = load_prior(model, device=session.device)
    images = ddim_images(session.priors[model], prompt, cams, cfg.ddim_samples, guidance, cfg.ddim_steps)
    scored(
        "ddim",
        {i: images[i : i + 1] for i in range(len(images))},
        {i: f"DDIM sample {i} (x_T seed {i}, guidance {guidance:g}, {cfg.ddim_steps} steps)" for i in range(len(images))},
        still=True,
        with_cross_fid=False,
        guidance_scale=guidance,
    )
    session.bar.done()


def _evaluate_prompt(session: _Session, prompt: str, model: str, methods: dict[str, dict[int, Run]], n_truth: int) -> None:
    """Render and score every method's runs of one prompt and backbone, then its truth objects and DDIM samples."""
    from fsd_gs.shapes.world import COLOUR_NAMES

    cfg = session.cfg
    scorer = session.scorers.get(model)
    size = cfg.size or (64 if is_shapes_world(model) else 256)
    cams = eval_cameras(cfg.view, size, session.device)
    slug = slugify(prompt)
    n_colours = len(COLOUR_NAMES) if is_shapes_world(model) else 0

    scored = functools.partial(
        _score_set, cfg, scorer, prompt, model, n_colours, session.gallery_dir, slug, session.results, cams.azimuth.tolist()
    )

    for method, runs in methods.items():
        views = _render_runs(session, runs, cams)
        scored(method, views, {s: str(r.run_dir) for s, r in runs.items()}, guidance_scale=shared_guidance(runs.values()))
    if n_truth:
        scored("truth", *_render_truth(session, prompt, n_truth, cams))
    if cfg.ddim_samples:
        _score_ddim(session, scored, prompt, model, methods, cams)


def _settings(cfg: EvaluateConfig, device: torch.device, found: Found) -> dict[str, Any]:
    """The settings recorded in evaluation.json and quoted by the table and the gallery."""
    return {
        **dataclasses.asdict(cfg.view),
        "size": cfg.size,
        "paths": [str(p) for p in cfg.paths],
        "ddim_samples": cfg.ddim_samples,
        "ddim_steps": cfg.ddim_steps,
        "ddim_guidance": cfg.ddim_guidance,
        "truth": cfg.truth,
        "threads": cfg.threads,
        "device": str(device),
        "manifests": [str(p) for p in found.manifests],
    }


def _write_outputs(
    cfg: EvaluateConfig,
    folder: Path,
    results: list[SetResult],
    missing: list[dict[str, str]],
    settings: dict[str, Any],
    notes: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Write evaluation.json, evaluation.md and (with --gallery) gallery/index.html; returns the JSON data."""
    data = to_json(results, missing, settings, notes)
    (folder / "evaluation.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (folder / "evaluation.md").write_text(markdown(results, missing, settings, notes))
    if cfg.gallery:
        gallery_dir = folder / "gallery"
        gallery_dir.mkdir(exist_ok=True)
        gallery.write_index(
            gallery_dir, results, {m: n["quality"] for m, n in notes.items()}, "FSD evaluation", gallery.gallery_notes(settings)
        )
    return data


def evaluate(cfg: EvaluateConfig) -> Evaluation:
    """Run the whole evaluation and write its files; returns where they are and what they say."""
    from fsd_gs.device import resolve_device

    cfg.validate()
    found = find_runs(cfg.paths)
    groups, dropped = group_runs(found.runs)
    missing = [{"id": m.id, "reason": m.reason} for m in [*found.missing, *dropped]]
    device = resolve_device(cfg.device)
    scorers = _Scorers(cfg, device)
    for model in sorted({key[2] for key in groups}):
        scorers.get(model)  # bad --clip or a missing judge fails before anything is written
    folder = output_folder(cfg, found)

    prompts = _by_prompt(groups)
    n_truth = _truth_counts(cfg, prompts)
    total = len(found.runs) - len(dropped) + sum(n_truth.values()) + (len(prompts) if cfg.ddim_samples else 0)

    session = _Session(cfg, device, scorers, folder / "gallery", _Counter(total, cfg.progress))
    with cpu_threads(cfg.threads, device), contextlib.closing(session.bar):
        for (prompt, model), methods in sorted(prompts.items()):
            _evaluate_prompt(session, prompt, model, methods, n_truth[(prompt, model)])

    settings = _settings(cfg, device, found)
    notes = {
        model: {"quality": s.quality_name, "classifier": s.classifier_name, "features": s.feature_name, "views": s.view_reader}
        for model, s in scorers.cache.items()
    }
    data = _write_outputs(cfg, folder, session.results, missing, settings, notes)
    return Evaluation(folder, session.results, missing, data)
